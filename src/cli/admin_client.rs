//! A running daemon, reached over its admin listener: how every command
//! does its work while a daemon holds the cache.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;

use super::healthcheck::{healthcheck, reachable_addr};
use crate::config::Config;

/// A running daemon, reached over its admin listener.
pub struct Daemon {
    pub admin: SocketAddr,
    http: reqwest::Client,
    admin_auth: Option<reqwest::header::HeaderValue>,
}

impl Daemon {
    /// The daemon for this config, if its admin listener answers.
    pub fn find(config: &Config) -> Option<Daemon> {
        healthcheck(config.admin_listen).ok()?;
        // The daemon's own config names the admin token: the CLI on the
        // same host reads it from there. Unreadable, the daemon's 401 says
        // what is missing.
        let admin_auth = config.auth.admin_token_file.as_ref().and_then(|path| {
            let token = std::fs::read_to_string(path).unwrap_or_default();
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim())).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        Some(Daemon {
            admin: reachable_addr(config.admin_listen),
            http,
            admin_auth,
        })
    }

    /// A request to the admin listener, with the admin token when one is
    /// configured (never sent to the registry listener).
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.admin_url(path));
        match &self.admin_auth {
            Some(auth) => request.header(reqwest::header::AUTHORIZATION, auth.clone()),
            None => request,
        }
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Sends an admin request; the JSON answer, or the daemon's error.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<(reqwest::StatusCode, T)> {
        let response = request.send().await.context("asking the daemon")?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .context("reading the daemon's answer")?;
        if let Ok(v) = serde_json::from_slice::<T>(&bytes) {
            return Ok((status, v));
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(anyhow!("the daemon answered {status}: {message}"))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self.call(self.admin(reqwest::Method::GET, path)).await?.1)
    }
}
