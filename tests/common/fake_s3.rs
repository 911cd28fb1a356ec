//! A tiny in-process S3 endpoint that ignores conditional writes, as
//! Garage does: every PUT succeeds (with an ETag), `If-None-Match: *` and
//! `If-Match` included; HEAD and GET answer what was put, 404 otherwise;
//! DeleteObjects removes what it names. [`FakeS3::set_hang`] makes it a
//! store that reads requests and never answers.
//! Only for the startup probe's negative case: a real engine (SeaweedFS,
//! [`super::seaweedfs`]) is used everywhere else.
//!
//! Plain blocking HTTP/1.1 on a std `TcpListener`, one thread per
//! connection, keep-alive as object_store's client expects. It stops when
//! dropped (the accept loop is woken by a last connection of its own).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Default)]
struct State {
    objects: Mutex<HashMap<String, Vec<u8>>>,
    /// (method, path with query, whether it carried a conditional header)
    requests: Mutex<Vec<(String, String, bool)>>,
    puts: AtomicUsize,
    stop: AtomicBool,
    /// Read each request, then answer nothing until this is cleared.
    hang: AtomicBool,
}

pub struct FakeS3 {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl FakeS3 {
    pub fn start() -> FakeS3 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake S3");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        FakeS3 { addr, state }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on every request is read and never answered (a store that
    /// hangs), until `set_hang(false)`.
    pub fn set_hang(&self, on: bool) {
        self.state.hang.store(on, Ordering::Relaxed);
    }

    /// PUTs answered so far.
    pub fn puts(&self) -> usize {
        self.state.puts.load(Ordering::Relaxed)
    }

    /// PUTs that carried `If-None-Match` or `If-Match` (all answered 200).
    pub fn conditional_puts(&self) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _, c)| m == "PUT" && *c)
            .count()
    }

    /// Every request so far, as `METHOD target`.
    pub fn requests(&self) -> Vec<String> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(m, p, _)| format!("{m} {p}"))
            .collect()
    }
}

impl Drop for FakeS3 {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve(conn: TcpStream, state: &State) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let mut length = 0usize;
        let mut conditional = false;
        let mut chunked = false;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                match k.as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "if-none-match" | "if-match" => conditional = true,
                    "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        r.read_exact(&mut body)?;
        if chunked {
            body = read_chunked(&mut r)?;
        }
        state
            .requests
            .lock()
            .unwrap()
            .push((method.clone(), target.clone(), conditional));
        while state.hang.load(Ordering::Relaxed) {
            if state.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let key = path.to_string();
        let now = http_date(SystemTime::now());
        let response = match method.as_str() {
            "PUT" => {
                state.puts.fetch_add(1, Ordering::Relaxed);
                let etag = format!("\"{:x}\"", state.puts.load(Ordering::Relaxed));
                if !query.contains("partNumber") {
                    state.objects.lock().unwrap().insert(key, body);
                }
                reply(200, &[("ETag", &etag)], b"", true)
            }
            "HEAD" | "GET" if query.contains("list-type") => reply(
                200,
                &[("Content-Type", "application/xml")],
                br#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><IsTruncated>false</IsTruncated><KeyCount>0</KeyCount></ListBucketResult>"#,
                method == "GET",
            ),
            "HEAD" | "GET" => {
                let objects = state.objects.lock().unwrap();
                match objects.get(&key) {
                    Some(b) => {
                        let etag = format!("\"{}\"", b.len());
                        reply(
                            200,
                            &[
                                ("ETag", &etag),
                                ("Last-Modified", &now),
                                ("Content-Type", "application/octet-stream"),
                            ],
                            b,
                            method == "GET",
                        )
                    }
                    None => not_found(method == "GET"),
                }
            }
            "DELETE" => {
                state.objects.lock().unwrap().remove(&key);
                reply(204, &[], b"", false)
            }
            // object_store deletes through DeleteObjects, even one key.
            "POST" if query.split('&').any(|q| q == "delete") => {
                let text = String::from_utf8_lossy(&body).into_owned();
                let mut deleted = String::new();
                let mut objects = state.objects.lock().unwrap();
                for k in text.split("<Key>").skip(1) {
                    let k = k.split("</Key>").next().unwrap_or_default();
                    objects.remove(&format!("{key}/{k}"));
                    deleted.push_str(&format!("<Deleted><Key>{k}</Key></Deleted>"));
                }
                let xml = format!(
                    r#"<?xml version="1.0" encoding="UTF-8"?><DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{deleted}</DeleteResult>"#
                );
                reply(
                    200,
                    &[("Content-Type", "application/xml")],
                    xml.as_bytes(),
                    true,
                )
            }
            "POST" if query.contains("uploads") => reply(
                200,
                &[("Content-Type", "application/xml")],
                br#"<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult><UploadId>fake-upload</UploadId></InitiateMultipartUploadResult>"#,
                true,
            ),
            "POST" => reply(
                200,
                &[("Content-Type", "application/xml")],
                br#"<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult><ETag>"fake"</ETag></CompleteMultipartUploadResult>"#,
                true,
            ),
            _ => reply(405, &[], b"", true),
        };
        out.write_all(&response)?;
        out.flush()?;
    }
}

fn read_chunked(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size =
            usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if size == 0 {
            line.clear();
            r.read_line(&mut line)?;
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        line.clear();
        r.read_line(&mut line)?;
    }
}

fn not_found(with_body: bool) -> Vec<u8> {
    reply(
        404,
        &[("Content-Type", "application/xml")],
        br#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>"#,
        with_body,
    )
}

/// A response with `Content-Length` of `body` (sent only when `with_body`:
/// a HEAD announces the length without the bytes).
fn reply(status: u16, headers: &[(&str, &str)], body: &[u8], with_body: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        404 => "Not Found",
        _ => "Other",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nDate: {}\r\nx-amz-request-id: fake\r\n",
        http_date(SystemTime::now())
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if status != 204 {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if with_body && status != 204 {
        out.extend_from_slice(body);
    }
    out
}

/// RFC 9110 IMF-fixdate: `Wed, 02 Dec 2026 19:26:49 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days.rem_euclid(7)) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
