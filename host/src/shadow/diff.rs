//! How two versions' effects are compared: requests paired by method and
//! URL in order, JSON bodies field by field; metric updates as multisets;
//! folders file by file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::runtime::observer::Exchange;

/// The most field differences one pair of request bodies reports.
const FIELDS_PER_REQUEST: usize = 20;
/// How much of a body or value a difference shows.
const SHOWN: usize = 400;

/// One way two requests differ. `context` is the text the event is found
/// in (the array element of a batch body that holds the field, or the
/// whole body).
#[derive(Debug, PartialEq)]
pub struct RequestDiff {
    pub what: String,
    pub serving: String,
    pub shadow: String,
    pub context: String,
}

fn shown(text: &str) -> String {
    crate::cut::truncate(text, SHOWN).into_owned()
}

/// Each request once (a request tried again after a failure is the same
/// request), grouped by method and URL in the order first seen.
fn grouped(requests: &[Exchange]) -> BTreeMap<(String, String), Vec<&Exchange>> {
    let mut seen = BTreeSet::new();
    let mut groups: BTreeMap<(String, String), Vec<&Exchange>> = BTreeMap::new();
    for r in requests {
        if seen.insert((&r.method, &r.url, &r.body)) {
            groups
                .entry((r.method.clone(), r.url.clone()))
                .or_default()
                .push(r);
        }
    }
    groups
}

/// How the shadow's requests differ from the serving version's.
pub fn requests(serving: &[Exchange], shadow: &[Exchange]) -> Vec<RequestDiff> {
    let (a, b) = (grouped(serving), grouped(shadow));
    let keys: BTreeSet<&(String, String)> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        let (method, url) = key;
        let none = Vec::new();
        let (xs, ys) = (a.get(key).unwrap_or(&none), b.get(key).unwrap_or(&none));
        for i in 0..xs.len().max(ys.len()) {
            match (xs.get(i), ys.get(i)) {
                (Some(x), Some(y)) if x.body == y.body => {}
                (Some(x), Some(y)) => out.extend(bodies(method, url, &x.body, &y.body)),
                (Some(x), None) => out.push(RequestDiff {
                    what: format!("{method} {url}"),
                    serving: format!("sent {}", shown(&x.body)),
                    shadow: "not sent".into(),
                    context: format!("{url} {}", x.body),
                }),
                (None, Some(y)) => out.push(RequestDiff {
                    what: format!("{method} {url}"),
                    serving: "not sent".into(),
                    shadow: format!("sent {}", shown(&y.body)),
                    context: format!("{url} {}", y.body),
                }),
                (None, None) => {}
            }
        }
    }
    out
}

/// Two bodies of the same request: field by field if both are JSON.
fn bodies(method: &str, url: &str, serving: &str, shadow: &str) -> Vec<RequestDiff> {
    let (Ok(a), Ok(b)) = (
        serde_json::from_str::<Value>(serving),
        serde_json::from_str::<Value>(shadow),
    ) else {
        return vec![RequestDiff {
            what: format!("{method} {url} body"),
            serving: shown(serving),
            shadow: shown(shadow),
            context: format!("{url} {serving}"),
        }];
    };
    let mut fields = Vec::new();
    json(&a, &b, String::new(), &a, &mut fields);
    fields
        .into_iter()
        .map(|(path, x, y, context)| RequestDiff {
            what: format!("{method} {url} {path}"),
            serving: x,
            shadow: y,
            context,
        })
        .collect()
}

/// Leaf differences of two JSON values: (path, serving, shadow, the
/// serving value's innermost array element around it, as text).
fn json(
    a: &Value,
    b: &Value,
    path: String,
    around: &Value,
    out: &mut Vec<(String, String, String, String)>,
) {
    if out.len() >= FIELDS_PER_REQUEST || a == b {
        return;
    }
    let missing = || "(none)".to_string();
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => json(p, q, sub, around, out),
                    (p, q) => out.push((
                        sub,
                        p.map_or_else(missing, |v| shown(&v.to_string())),
                        q.map_or_else(missing, |v| shown(&v.to_string())),
                        around.to_string(),
                    )),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let sub = format!("{path}[{i}]");
                match (x.get(i), y.get(i)) {
                    (Some(p), Some(q)) => json(p, q, sub, p, out),
                    (p, q) => out.push((
                        sub,
                        p.map_or_else(missing, |v| shown(&v.to_string())),
                        q.map_or_else(missing, |v| shown(&v.to_string())),
                        p.or(q).map_or_else(String::new, Value::to_string),
                    )),
                }
            }
        }
        _ => out.push((
            path,
            shown(&a.to_string()),
            shown(&b.to_string()),
            around.to_string(),
        )),
    }
}

/// Which event of the batch (`events`: event id and booking id, in batch
/// order) `context` is about: the one whose event id it names; else the
/// newest of the booking it names as a JSON string (a sink that writes
/// each booking's latest state writes that one); else one it names at all.
pub fn event_of(context: &str, events: &[(&str, &str)]) -> Option<usize> {
    let quoted = |id: &str| context.contains(&format!("\"{id}\""));
    events
        .iter()
        .position(|(event, _)| quoted(event))
        .or_else(|| events.iter().rposition(|(_, booking)| quoted(booking)))
        .or_else(|| {
            events
                .iter()
                .rposition(|(_, booking)| context.contains(booking))
        })
}

/// The metric updates only one side made, if any: (serving's, shadow's).
pub fn metrics(serving: &[String], shadow: &[String]) -> Option<(String, String)> {
    fn count(lines: &[String]) -> BTreeMap<&str, i64> {
        let mut m: BTreeMap<&str, i64> = BTreeMap::new();
        for l in lines {
            *m.entry(l.as_str()).or_default() += 1;
        }
        m
    }
    let (a, b) = (count(serving), count(shadow));
    if a == b {
        return None;
    }
    let only = |x: &BTreeMap<&str, i64>, y: &BTreeMap<&str, i64>| {
        let lines: Vec<String> = x
            .iter()
            .filter_map(|(l, n)| {
                let extra = n - y.get(l).copied().unwrap_or(0);
                (extra > 0).then(|| {
                    if extra == 1 {
                        l.to_string()
                    } else {
                        format!("{l} (×{extra})")
                    }
                })
            })
            .collect();
        if lines.is_empty() {
            "(nothing else)".to_string()
        } else {
            shown(&lines.join("; "))
        }
    };
    Some((only(&a, &b), only(&b, &a)))
}

/// The files under `dir`, at most `max`: each path, the path relative to
/// `dir`, and its size.
pub fn walk(dir: &Path, max: usize) -> Vec<(std::path::PathBuf, String, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => todo.push(path),
                Ok(t) if t.is_file() => {
                    let rel = path
                        .strip_prefix(dir)
                        .map_or_else(|_| path.display().to_string(), |p| p.display().to_string());
                    let size = entry.metadata().map_or(0, |m| m.len());
                    out.push((path, rel, size));
                }
                _ => {}
            }
            if out.len() >= max {
                return out;
            }
        }
    }
    out
}

/// Files under `dir` (relative paths) with their size and sha256.
fn files(dir: &Path) -> BTreeMap<String, (u64, String)> {
    walk(dir, 10_000)
        .into_iter()
        .map(|(path, rel, size)| {
            let bytes = std::fs::read(&path).unwrap_or_default();
            (rel, (size, crate::runtime::sha256_hex(&bytes)))
        })
        .collect()
}

/// The serving version's folder against the shadow's scratch copy.
pub fn folders(serving: &Path, scratch: &Path) -> Value {
    let (a, b) = (files(serving), files(scratch));
    let first =
        |names: Vec<&String>| -> Vec<String> { names.into_iter().take(20).cloned().collect() };
    let serving_only: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let shadow_only: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let differing: Vec<&String> = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    let same = a.iter().filter(|(k, v)| b.get(*k) == Some(*v)).count();
    serde_json::json!({
        "serving": serving.display().to_string(),
        "shadow": scratch.display().to_string(),
        "same": same,
        "serving_only": first(serving_only),
        "shadow_only": first(shadow_only),
        "differing": first(differing),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(url: &str, body: &str) -> Exchange {
        Exchange {
            method: "POST".into(),
            url: url.into(),
            body: body.into(),
            status: 200,
            response: "{}".into(),
        }
    }

    #[test]
    fn a_changed_field_of_a_batch_body_is_put_on_its_booking() {
        let serving = [post(
            "http://crm/upsert",
            r#"{"inputs":[{"id":"b1","p":{"price":"5400"}},{"id":"b2","p":{"price":"100"}}]}"#,
        )];
        let shadow = [post(
            "http://crm/upsert",
            r#"{"inputs":[{"id":"b1","p":{"price":"5400"}},{"id":"b2","p":{"price":"1.00"}}]}"#,
        )];
        let found = requests(&serving, &shadow);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].what, "POST http://crm/upsert inputs[1].p.price");
        assert_eq!(
            (found[0].serving.as_str(), found[0].shadow.as_str()),
            ("\"100\"", "\"1.00\"")
        );
        let batch = [("e1", "b1"), ("e2", "b2"), ("e3", "b2")];
        assert_eq!(
            event_of(&found[0].context, &batch),
            Some(2),
            "the newest of b2"
        );
        assert_eq!(event_of("{\"last\":\"e2\",\"id\":\"b2\"}", &batch), Some(1));
        assert!(requests(&serving, &serving).is_empty());
        let unsent = requests(&serving, &[]);
        assert_eq!(unsent[0].shadow, "not sent");
    }

    #[test]
    fn metric_updates_compare_as_multisets() {
        let a = ["x += 1".to_string(), "y += 1".into()];
        let b = ["y += 1".to_string(), "x += 1".into()];
        assert_eq!(metrics(&a, &b), None);
        let c = ["x += 1".to_string(), "x += 1".into()];
        assert_eq!(
            metrics(&a, &c),
            Some(("y += 1".to_string(), "x += 1".to_string()))
        );
    }
}
