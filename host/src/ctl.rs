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
    /// The command line itself is wrong.
    #[error("{0}")]
    Usage(String),
}

impl CtlError {
    /// 1: the host refused or failed the request; 3: no host answered.
    /// (2 is a usage error, as for every command.)
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused(_) => 1,
            CtlError::Usage(_) => 2,
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
        self.send_body(method, path, missing, None)
    }

    /// [`Admin::send`] with a JSON body.
    fn send_body(
        &self,
        method: reqwest::Method,
        path: &str,
        missing: &str,
        body: Option<&Value>,
    ) -> Result<Value, CtlError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            // A rewind waits for every member of the group to leave: with
            // static membership up to the session timeout and 15 s more.
            request = request.json(body).timeout(Duration::from_secs(180));
        }
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
        let body = self.send(reqwest::Method::POST, &path, WRITES_OFF)?;
        if json {
            return Ok(pretty(&body));
        }
        Ok(format!(
            "{plugin} {}\n",
            if paused { "paused" } else { "resumed" }
        ))
    }

    /// `ctl rewind NAME --to T`: moves the plugin's group on every host.
    /// `to` is `earliest`, `latest`, an RFC 3339 time, or
    /// `<partition>=<offset>,...`.
    pub fn rewind(&self, plugin: &str, to: &str, json: bool) -> Result<String, CtlError> {
        let to = rewind_target(to)?;
        let body = self.send_body(
            reqwest::Method::POST,
            &format!("/plugins/{plugin}/rewind"),
            WRITES_OFF,
            Some(&serde_json::json!({ "to": to })),
        )?;
        if json {
            return Ok(pretty(&body));
        }
        let mut rows = vec![row(["PARTITION", "FROM", "TO"])];
        for p in body["partitions"].as_array().into_iter().flatten() {
            rows.push(vec![
                text(&p["partition"]),
                text(&p["before"]),
                text(&p["after"]),
            ]);
        }
        let mut out = format!(
            "{plugin}: group {} rewound to {} in {:.1} s; every host goes on from there\n",
            text(&body["group"]),
            text(&body["to"]),
            body["seconds"].as_f64().unwrap_or_default()
        );
        out.push_str(&table(&rows));
        Ok(out)
    }

    /// `ctl redrive NAME`: starts a redrive and, unless `wait` is off,
    /// follows it to its end, its progress on stderr.
    pub fn redrive(
        &self,
        plugin: &str,
        class: Option<&str>,
        since: Option<&str>,
        wait: bool,
        json: bool,
    ) -> Result<String, CtlError> {
        let mut ask = serde_json::Map::new();
        if let Some(c) = class {
            ask.insert("class".into(), c.into());
        }
        if let Some(s) = since {
            ask.insert("since".into(), s.into());
        }
        let path = format!("/plugins/{plugin}/redrive");
        let started = self.send_body(
            reqwest::Method::POST,
            &path,
            WRITES_OFF,
            Some(&Value::Object(ask)),
        )?;
        let id = text(&started["id"]);
        if !wait {
            return Ok(if json {
                pretty(&started)
            } else {
                format!("{plugin}: redrive {id} started (plugboard ctl redrive-status {plugin})\n")
            });
        }
        let mut last = String::new();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let progress = self.get(&path)?;
            if progress["id"] != started["id"] {
                continue;
            }
            let line = progress_line(&progress);
            if line != last {
                eprintln!("{line}");
                last = line;
            }
            match progress["state"].as_str() {
                Some("running") => continue,
                Some("done") if json => return Ok(pretty(&progress)),
                Some("done") => return Ok(format!("{plugin}: redrive {id} done: {last}\n")),
                _ => {
                    return Err(CtlError::Refused(format!(
                        "the redrive failed: {} ({last})",
                        text(&progress["error"])
                    )));
                }
            }
        }
    }

    /// `ctl approve NAME`: the version waiting for approval goes live.
    pub fn approve(&self, plugin: &str, json: bool) -> Result<String, CtlError> {
        let body = self.send(
            reqwest::Method::POST,
            &format!("/plugins/{plugin}/approve"),
            WRITES_OFF,
        )?;
        if json {
            return Ok(pretty(&body));
        }
        let granted: Vec<String> = body["granted"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        let mut out = format!(
            "{plugin}: version {} approved, granted {}\n",
            text(&body["version"]),
            granted.join("; ")
        );
        out.push_str(if body["serving"] == true {
            "it serves on this host now\n"
        } else {
            "it goes live on each host at its next rescan\n"
        });
        Ok(out)
    }

    /// `ctl shadow NAME`: the shadow against the serving version.
    pub fn shadow(&self, plugin: &str, json: bool) -> Result<String, CtlError> {
        let report = self.get(&format!("/plugins/{plugin}/shadow"))?;
        if json {
            return Ok(pretty(&report));
        }
        let kinds = &report["differences_by_kind"];
        let mut out = format!(
            "{plugin}: shadow {} beside the serving version since {}\n\
             compared {} events: {} agree, {} differ{}\n\
             differences: outcome {}, requests {}, metrics {}\n",
            text(&report["version"]),
            text(&report["since"]),
            text(&report["compared"]),
            text(&report["agreed"]),
            text(&report["differing"]),
            report["agreement"]
                .as_f64()
                .map_or(String::new(), |a| format!(" ({:.1}% agreement)", a * 100.0)),
            text(&kinds["outcome"]),
            text(&kinds["request"]),
            text(&kinds["metrics"]),
        );
        if let Some(off) = report["switched_off"].as_str() {
            let _ = writeln!(out, "switched off: {off}");
        }
        let files = &report["files"];
        if files.is_object() {
            let list = |k: &str| files[k].as_array().map_or(0, Vec::len);
            let _ = writeln!(
                out,
                "files: {} the same, {} differ, {} only served, {} only in the shadow",
                text(&files["same"]),
                list("differing"),
                list("serving_only"),
                list("shadow_only")
            );
        }
        let differences = report["differences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !differences.is_empty() {
            out.push_str("\nfirst differences:\n");
            let mut rows = vec![row(["EVENT", "BOOKING", "AT", "WHAT", "SERVING", "SHADOW"])];
            for d in &differences {
                let e = &d["event"];
                rows.push(vec![
                    text(&e["event_id"]),
                    text(&e["booking_id"]),
                    format!("p{} @{}", text(&e["partition"]), text(&e["offset"])),
                    text(&d["what"]),
                    text(&d["serving"]),
                    text(&d["shadow"]),
                ]);
            }
            out.push_str(&table(&rows));
        }
        Ok(out)
    }

    /// `ctl promote NAME`: the shadow becomes the serving version.
    pub fn promote(&self, plugin: &str, json: bool) -> Result<String, CtlError> {
        let body = self.send(
            reqwest::Method::POST,
            &format!("/plugins/{plugin}/promote"),
            WRITES_OFF,
        )?;
        if json {
            return Ok(pretty(&body));
        }
        let state = if body["serving"] == true {
            "it serves on this host now".to_string()
        } else if body["pending_approval"] == true {
            format!(
                "it asks for new grants and waits for approval (plugboard ctl approve {plugin})"
            )
        } else {
            "it goes live on each host at its next rescan".to_string()
        };
        Ok(format!(
            "{plugin}: shadow {} promoted after {} events compared, {} agreeing; {state}\n",
            text(&body["version"]),
            text(&body["compared"]),
            text(&body["agreed"]),
        ))
    }

    /// `ctl redrive-status NAME`: how far the plugin's latest redrive got.
    pub fn redrive_status(&self, plugin: &str, json: bool) -> Result<String, CtlError> {
        let progress = self.get(&format!("/plugins/{plugin}/redrive"))?;
        if json {
            return Ok(pretty(&progress));
        }
        Ok(format!(
            "{plugin}: redrive {} {} on {}: {}\n",
            text(&progress["id"]),
            text(&progress["state"]),
            text(&progress["owner"]),
            progress_line(&progress)
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
            } else if p["pending_approval"].is_object() {
                "running, pending-approval".to_string()
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
            let pending = &p["pending_approval"];
            if pending.is_object() {
                let asks: Vec<String> = pending["asks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect();
                let _ = writeln!(
                    out,
                    "{}: version {} waits for approval (plugboard ctl approve {}): it asks for {}",
                    text(&p["name"]),
                    text(&pending["version"]),
                    text(&p["name"]),
                    asks.join("; ")
                );
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

/// What a 404 of a write endpoint means.
const WRITES_OFF: &str = "the host serves no write endpoints (set admin_token in its config)";

/// A rewind target as the endpoint takes it.
fn rewind_target(to: &str) -> Result<Value, CtlError> {
    if !to.contains('=') {
        return Ok(Value::String(to.to_string()));
    }
    let mut offsets = serde_json::Map::new();
    for pair in to.split(',') {
        let parsed = pair.split_once('=').and_then(|(p, o)| {
            Some((p.trim().parse::<i32>().ok()?, o.trim().parse::<i64>().ok()?))
        });
        let Some((partition, offset)) = parsed else {
            return Err(CtlError::Usage(format!(
                "`{pair}` is not <partition>=<offset> (--to takes earliest, latest, an RFC 3339 time, or 0=120,1=98)"
            )));
        };
        offsets.insert(partition.to_string(), offset.into());
    }
    Ok(Value::Object(offsets))
}

/// A redrive's counts in one line.
fn progress_line(p: &Value) -> String {
    format!(
        "read {}, handled {}, parked again {}, skipped {}, remaining {}",
        text(&p["read"]),
        text(&p["handled"]),
        text(&p["parked_again"]),
        text(&p["skipped"]),
        text(&p["remaining"])
    )
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
