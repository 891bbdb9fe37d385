//! `plugboard ctl`: the operator's side of a running host's admin endpoint.
//! Each verb is one request; the answer is printed as a table, or as the
//! endpoint's JSON with `--json`, and the exit code says how it went
//! ([`CtlError::exit_code`]), so scripts can trust it.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

/// Why a verb failed; callers map it to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The host answered, and refused or failed the request (an unknown
    /// plugin, a broker that does not answer).
    #[error("{0}")]
    Refused(String),
    /// The admin endpoint could not be reached (or answered nonsense).
    #[error("{0}")]
    Unreachable(String),
}

impl CtlError {
    /// 1: the host refused or failed the request; 3: no host answered.
    /// (2 is a usage error, as for every command.)
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused(_) => 1,
            CtlError::Unreachable(_) => 3,
        }
    }
}

/// A host's admin endpoint.
pub struct Admin {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

impl Admin {
    /// `base` is the endpoint's URL (`http://127.0.0.1:9464`); `token`
    /// goes along as a bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, CtlError> {
        let http = reqwest::blocking::Client::builder()
            // Offsets ask the broker, which the host bounds at 5 s a step.
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| CtlError::Unreachable(format!("cannot make an HTTP client: {e}")))?;
        Ok(Admin {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// GETs `path` and returns its JSON.
    fn get(&self, path: &str) -> Result<Value, CtlError> {
        self.send(
            reqwest::Method::GET,
            path,
            "the host does not serve it (is it a plugboard admin endpoint?)",
        )
    }

    /// Sends `method` to `path` and returns the answer's JSON; `missing`
    /// says what a 404 without a reason (no such route) means.
    fn send(&self, method: reqwest::Method, path: &str, missing: &str) -> Result<Value, CtlError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().map_err(|e| {
            CtlError::Unreachable(format!(
                "cannot reach the admin endpoint at {}: {e} (set --admin or PLUGBOARD_ADMIN_URL to the host's admin_addr)",
                self.base
            ))
        })?;
        let status = response.status();
        let body: Option<Value> = response.json().ok();
        if !status.is_success() {
            let reason = body.as_ref().and_then(|b| b["error"].as_str());
            let error = match reason {
                Some(reason) => reason,
                None if status == reqwest::StatusCode::NOT_FOUND => missing,
                None => "no reason given",
            };
            return Err(CtlError::Refused(format!("{error} ({status})")));
        }
        body.ok_or_else(|| CtlError::Unreachable(format!("{url} did not answer JSON ({status})")))
    }

    /// `ctl pause NAME` / `ctl resume NAME` (the token is required).
    pub fn pause(&self, plugin: &str, paused: bool, json: bool) -> Result<String, CtlError> {
        let verb = if paused { "pause" } else { "resume" };
        let path = format!("/plugins/{plugin}/{verb}");
        let body = self.send(
            reqwest::Method::POST,
            &path,
            "the host serves no write endpoints (set admin_token in its config)",
        )?;
        if json {
            return Ok(pretty(&body));
        }
        Ok(format!(
            "{plugin} {}\n",
            if paused { "paused" } else { "resumed" }
        ))
    }

    /// `ctl status`: every plugin of the host.
    pub fn status(&self, json: bool) -> Result<String, CtlError> {
        let body = self.get("/plugins")?;
        if json {
            return Ok(pretty(&body));
        }
        let plugins = body["plugins"].as_array().cloned().unwrap_or_default();
        let mut rows = vec![row([
            "PLUGIN", "STATE", "VERSION", "HANDLED", "PARKED", "LAG", "WAITING",
        ])];
        for p in &plugins {
            let waiting = p["waiting"].as_array().cloned().unwrap_or_default();
            let waits = if waiting.is_empty() {
                "-".to_string()
            } else {
                waiting
                    .iter()
                    .map(|w| {
                        let partition = match w["partition"].as_i64() {
                            Some(-1) => "all".to_string(),
                            Some(p) => format!("p{p}"),
                            None => "?".to_string(),
                        };
                        format!("{partition} {}", text(&w["cause"]))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let sha = text(&p["sha256"]);
            let state = if p["paused"] == true {
                "paused".to_string()
            } else {
                text(&p["state"])
            };
            rows.push(vec![
                text(&p["name"]),
                state,
                sha.chars().take(12).collect(),
                text(&p["handled"]),
                text(&p["dead_lettered"]),
                text(&p["lag"]),
                waits,
            ]);
        }
        let mut out = table(&rows);
        for p in &plugins {
            if let Some(error) = p["last_error"].as_str() {
                let _ = writeln!(out, "{}: last error: {error}", text(&p["name"]));
            }
        }
        Ok(out)
    }

    /// `ctl offsets NAME`: the plugin's group, per partition.
    pub fn offsets(&self, plugin: &str, json: bool) -> Result<String, CtlError> {
        let body = self.get(&format!("/plugins/{plugin}/offsets"))?;
        if json {
            return Ok(pretty(&body));
        }
        let mut rows = vec![row(["PARTITION", "COMMITTED", "END", "LAG"])];
        for p in body["partitions"].as_array().into_iter().flatten() {
            rows.push(vec![
                text(&p["partition"]),
                text(&p["committed"]),
                text(&p["high_watermark"]),
                text(&p["lag"]),
            ]);
        }
        let mut out = format!("group {}\n", text(&body["group"]));
        out.push_str(&table(&rows));
        let _ = writeln!(out, "total lag {}", text(&body["lag"]));
        Ok(out)
    }
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

/// Rows as left-aligned columns two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_lines_up_its_columns() {
        let rows = vec![
            row(["PLUGIN", "LAG"]),
            row(["crm-sync", "12"]),
            row(["m", "-"]),
        ];
        assert_eq!(table(&rows), "PLUGIN    LAG\ncrm-sync  12\nm         -\n");
    }

    #[test]
    fn no_host_is_exit_code_3_and_says_where_it_looked() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let admin = Admin::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let err = admin.status(false).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("PLUGBOARD_ADMIN_URL"), "{err}");
    }
}
