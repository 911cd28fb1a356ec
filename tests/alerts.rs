//! The shipped alert rules and dashboard queries, checked by Prometheus's own
//! promtool (Debian package `prometheus`, installed by
//! .ci/install-test-deps): the rules load, every alert fires in its cases
//! and stays quiet in the others, and every dashboard query parses.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RULES: &str = "config/prometheus/regcache-alerts.yml";
const RULE_TESTS: &str = "config/prometheus/tests/regcache-alerts.test.yml";
const DASHBOARD: &str = "config/grafana/regcache.json";

/// promtool, or `None` (with a message) where it is not installed.
fn promtool() -> Option<Command> {
    let found = Command::new("sh")
        .args(["-c", "command -v promtool"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "SKIPPED: promtool is not installed (Debian package prometheus; run .ci/install-test-deps)"
        );
        return None;
    }
    let mut c = Command::new("promtool");
    c.current_dir(ROOT);
    Some(c)
}

fn run(mut c: Command, args: &[&str]) -> String {
    let out = c.args(args).output().expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap()
}

/// The `alert:` names of the rules file.
fn alert_names() -> Vec<String> {
    read(RULES)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn the_alert_rules_load_and_pass_their_unit_tests() {
    let Some(c) = promtool() else { return };
    let checked = run(c, &["check", "rules", RULES]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let Some(c) = promtool() else { return };
    let tested = run(c, &["test", "rules", RULE_TESTS]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_case() {
    // (fires, stays quiet) per alert name, from the test file's cases.
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let tests = read(RULE_TESTS);
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_prefix("alertname:") else {
            continue;
        };
        let exp = lines.get(i + 1).copied().unwrap_or("");
        let entry = cases.entry(name.trim().to_owned()).or_default();
        match exp {
            "exp_alerts: []" => entry.1 = true,
            "exp_alerts:" => entry.0 = true,
            other => panic!("alertname {name} is followed by {other:?}"),
        }
    }
    let names = alert_names();
    assert!(names.len() >= 13, "{names:?}");
    for name in &names {
        assert_eq!(
            cases.get(name),
            Some(&(true, true)),
            "{name} needs a case where it fires and one where it does not"
        );
    }
    for required in ["RegcacheClientErrorRatioHigh", "RegcacheFillsFailing"] {
        assert!(names.iter().any(|n| n == required), "{required}");
    }
}

#[test]
fn the_disk_alerts_read_regcache_series_and_say_what_regcache_does() {
    let rules = read(RULES);
    // No join with node_exporter: another host's disk cannot fire them.
    let exprs: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!exprs.contains("node_filesystem"), "{exprs}");
    for stale in [
        "never evicts",
        "does not evict",
        "delete the cache directory",
    ] {
        assert!(!rules.contains(stale), "outdated advice: {stale}");
    }
    for needed in [
        "regcache_cache_free_bytes",
        "regcache_storage_ready",
        "result=\"no_room\"",
        "reason=\"free_space\"",
        "min_free",
    ] {
        assert!(rules.contains(needed), "{needed}");
    }
    // The case from the report: a database host at 5% free, seen only by
    // node_exporter, is in the test file and expects silence.
    let tests = read(RULE_TESTS);
    assert!(tests.contains("node_filesystem_avail_bytes{job=\"node\", instance=\"db1:9100\""));
}

/// Every query the dashboard sends, with Grafana's variables replaced the
/// way Prometheus would see them.
fn dashboard_queries() -> Vec<(String, String)> {
    let d: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut queries = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            queries.push((format!("{} {}", p["title"], t["refId"]), expr.to_owned()));
        }
    }
    // label_values(SELECTOR, label): the selector is PromQL.
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(sel, _)| sel.to_owned())
                .unwrap_or_else(|| panic!("variable query {q}"));
            queries.push((format!("variable {}", v["name"]), inner));
        }
    }
    queries
}

fn substitute(expr: &str) -> String {
    let mut e = expr.to_owned();
    for range in ["$__rate_interval", "$__interval", "$__range"] {
        e = e.replace(range, "5m");
    }
    // The remaining `$var`s sit in regex matchers: match anything.
    for var in ["$job", "$instance", "$upstream"] {
        e = e.replace(var, ".*");
    }
    assert!(!e.contains('$'), "an unknown variable in {expr}");
    e
}

#[test]
fn every_dashboard_query_parses() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 40, "{}", queries.len());
    // promtool parses PromQL offline only inside rule files: one recording
    // rule per query. JSON is YAML.
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| serde_json::json!({"record": format!("dashboard:query:{i}"), "expr": substitute(expr)}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(
        &file,
        serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .unwrap();
    let Some(c) = promtool() else { return };
    let out = run(c, &["check", "rules", file.to_str().unwrap()]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}\n{queries:#?}"
    );
}
