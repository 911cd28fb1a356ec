//! Checks the token server test support against the real registry: the
//! registry trusts its tokens (x5c and kid headers), rejects missing,
//! garbage, expired, wrong-audience and wrong-scope tokens, skopeo does the
//! token dance by itself, and pushes need Basic credentials.

pub mod common;

use std::time::{Duration, Instant};

use common::images::{self, skopeo, MANIFEST_ACCEPT, SKOPEO_TIMEOUT};
use common::registry::{http_request, Registry};
use common::token_server::{
    b64_std, b64_std_decode, b64_url, decode_claims, decode_header, Access, KeyRef, TokenServer,
};

const ISSUER: &str = "regcache-smoke-issuer";
const SERVICE: &str = "regcache-smoke-registry";
const USER: &str = "pusher";
const PASSWORD: &str = "pusher-password";

fn get_manifest(reg: &Registry, repo: &str, token: Option<&str>) -> common::registry::HttpResponse {
    let path = format!("/v2/{repo}/manifests/v1");
    let bearer = token.map(|t| format!("Bearer {t}"));
    // Includes the Docker schema2 type; test/big is an OCI manifest.
    let mut headers = vec![("Accept", MANIFEST_ACCEPT)];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    http_request(reg.addr, "GET", &path, &headers, None).expect("GET manifest")
}

#[test]
fn encodings() {
    for n in 0..20u8 {
        let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
        assert_eq!(b64_std_decode(&b64_std(&data)).unwrap(), data);
    }
    assert_eq!(b64_std(b"user:pass"), "dXNlcjpwYXNz");
    assert_eq!(b64_url(&[0xfb, 0xff]), "-_8");
    assert_eq!(b64_std_decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
    assert!(b64_std_decode("dXNlcjpwYXN").is_none());
    assert_eq!(
        Access::parse_scope("repository:a/b:pull,push"),
        Some(Access {
            kind: "repository".into(),
            name: "a/b".into(),
            actions: vec!["pull".into(), "push".into()],
        })
    );
}

#[tokio::test]
async fn real_registry_trusts_token_server() {
    let t0 = Instant::now();
    let ts = TokenServer::builder(ISSUER, SERVICE)
        .user(USER, PASSWORD)
        .expires_in(300)
        .start()
        .await;
    let (reg, fx) = ts.start_registry_with_fixtures(64 * 1024);
    eprintln!("token server + registry + fixtures in {:?}", t0.elapsed());
    let schema2 = &fx.docker_schema2;
    assert_eq!(schema2.repo, "test/schema2");

    // The challenge names the realm and service.
    let r = http_request(reg.addr, "GET", "/v2/", &[], None).unwrap();
    assert_eq!(r.status, 401);
    let challenge = r.header("WWW-Authenticate").unwrap_or_default().to_string();
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains(&format!("realm=\"{}\"", ts.realm()))
            && challenge.contains(&format!("service=\"{SERVICE}\"")),
        "{challenge}"
    );
    let r = get_manifest(&reg, "test/schema2", None);
    assert_eq!(r.status, 401);
    let challenge = r.header("WWW-Authenticate").unwrap_or_default();
    assert!(
        challenge.contains("scope=\"repository:test/schema2:pull\""),
        "{challenge}"
    );

    // An anonymous pull token works.
    assert_eq!(ts.count(), 0);
    let token = ts
        .fetch_token(&["repository:test/schema2:pull"], None)
        .unwrap();
    assert_eq!(ts.count(), 1);
    assert_eq!(ts.count_for_scope("repository:test/schema2:pull"), 1);
    assert_eq!(ts.count_for_repository("test/schema2"), 1);
    let req = &ts.requests()[0];
    assert!(!req.authorization);
    assert_eq!(req.service.as_deref(), Some(SERVICE));
    assert_eq!(req.status, 200);
    let claims = decode_claims(&token).unwrap();
    assert_eq!(claims["aud"], SERVICE);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["access"][0]["actions"], serde_json::json!(["pull"]));
    let header = decode_header(&token).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert!(header["x5c"].is_array());

    let r = get_manifest(&reg, "test/schema2", Some(&token));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("Docker-Content-Digest"),
        Some(schema2.digest.as_str())
    );
    assert_eq!(r.body, schema2.manifest);
    // The base endpoint accepts any valid token.
    let r = http_request(
        reg.addr,
        "GET",
        "/v2/",
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200);

    // Rejections: none, garbage, another repository's token, expired,
    // wrong audience, `aud` as an array (distribution 2.8 wants a string).
    assert_eq!(get_manifest(&reg, "test/schema2", None).status, 401);
    assert_eq!(
        get_manifest(&reg, "test/schema2", Some("garbage")).status,
        401
    );
    assert_eq!(
        get_manifest(&reg, "test/schema2", Some("e30.e30.AAAA")).status,
        401
    );
    let other = ts.fetch_token(&["repository:test/big:pull"], None).unwrap();
    assert_eq!(get_manifest(&reg, "test/big", Some(&other)).status, 200);
    assert_eq!(get_manifest(&reg, "test/schema2", Some(&other)).status, 401);
    let access = [Access {
        kind: "repository".into(),
        name: "test/schema2".into(),
        actions: vec!["pull".into()],
    }];
    let expired = ts.mint(&ts.claims("", &access, -120));
    assert_eq!(
        get_manifest(&reg, "test/schema2", Some(&expired)).status,
        401
    );
    let mut wrong_aud = ts.claims("", &access, 300);
    wrong_aud["aud"] = "someone-else".into();
    assert_eq!(
        get_manifest(&reg, "test/schema2", Some(&ts.mint(&wrong_aud))).status,
        401
    );
    let mut array_aud = ts.claims("", &access, 300);
    array_aud["aud"] = serde_json::json!([SERVICE]);
    assert_eq!(
        get_manifest(&reg, "test/schema2", Some(&ts.mint(&array_aud))).status,
        401,
        "distribution 2.8 takes `aud` as a string only"
    );
    assert_eq!(
        get_manifest(&reg, "test/schema2", Some(&ts.mint_pull("test/schema2"))).status,
        200
    );

    // A `kid` header (libtrust key ID of the root cert's key) works too.
    ts.set_key_ref(KeyRef::Kid);
    let kid_token = ts
        .fetch_token(&["repository:test/schema2:pull"], None)
        .unwrap();
    assert_eq!(decode_header(&kid_token).unwrap()["kid"], ts.key_id());
    assert_eq!(
        get_manifest(&reg, "test/schema2", Some(&kid_token)).status,
        200
    );
    ts.set_key_ref(KeyRef::X5c);

    // Credentials: wrong ones are refused; right ones get push too.
    assert!(ts
        .fetch_token(&["repository:test/schema2:pull"], Some((USER, "wrong")))
        .is_err());
    let rw = ts
        .fetch_token(
            &["repository:test/schema2:pull,push"],
            Some((USER, PASSWORD)),
        )
        .unwrap();
    assert_eq!(
        decode_claims(&rw).unwrap()["access"][0]["actions"],
        serde_json::json!(["pull", "push"])
    );
    let last = ts.requests().pop().unwrap();
    assert!(last.authorization);
    assert_eq!(last.authenticated_user.as_deref(), Some(USER));
    let ro = ts
        .fetch_token(&["repository:test/schema2:pull,push"], None)
        .unwrap();
    assert_eq!(
        decode_claims(&ro).unwrap()["access"][0]["actions"],
        serde_json::json!(["pull"])
    );

    // skopeo does the dance by itself, anonymously.
    let before = ts.count_for_scope("repository:test/schema2:pull");
    let image = format!("docker://{}/test/schema2:v1", reg.host());
    let raw = skopeo(
        &["inspect", "--raw", "--tls-verify=false", &image],
        SKOPEO_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", reg.logs()));
    assert_eq!(images::sha256_digest(raw.as_bytes()), schema2.digest);
    skopeo(&["inspect", "--tls-verify=false", &image], SKOPEO_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", reg.logs()));
    assert!(ts.count_for_scope("repository:test/schema2:pull") > before);

    // Pushing into a second token-auth registry: anonymous is refused,
    // Basic credentials of the configured user work.
    let reg2 = ts.start_registry();
    let dst = format!("docker://{}/copied/schema2:v1", reg2.host());
    let anon = skopeo(
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &image,
            &dst,
        ],
        SKOPEO_TIMEOUT,
    );
    let anon = anon.expect_err("anonymous push must be refused");
    assert!(anon.contains("denied"), "{anon}");
    let creds = format!("{USER}:{PASSWORD}");
    skopeo(
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            &image,
            &dst,
        ],
        SKOPEO_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", reg2.logs()));
    assert!(ts
        .requests()
        .iter()
        .any(|r| r.authenticated_user.as_deref() == Some(USER)
            && r.scopes
                .iter()
                .any(|s| s.starts_with("repository:copied/schema2:") && s.contains("push"))));
    let tok2 = ts
        .fetch_token(&["repository:copied/schema2:pull"], None)
        .unwrap();
    let r = get_manifest(&reg2, "copied/schema2", Some(&tok2));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, schema2.manifest);

    // Injected failures and require_auth.
    ts.set_status_override(Some(503));
    assert!(ts
        .fetch_token(&["repository:test/schema2:pull"], None)
        .is_err());
    assert_eq!(ts.requests().pop().unwrap().status, 503);
    ts.set_status_override(None);
    ts.set_require_auth(true);
    assert!(ts
        .fetch_token(&["repository:test/schema2:pull"], None)
        .is_err());
    assert!(ts
        .fetch_token(&["repository:test/schema2:pull"], Some((USER, PASSWORD)))
        .is_ok());
    ts.set_require_auth(false);

    let elapsed = t0.elapsed();
    eprintln!("done in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
}
