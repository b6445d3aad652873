//! What operators plug in: the Prometheus rules (`deploy/prometheus`) pass `promtool check
//! rules` and their own unit tests and mirror the built-in alerts, and every metric the rules
//! and the Grafana dashboard (`deploy/grafana/hotline.json`) query is one a fresh instance
//! exports, one the rules record, or one Prometheus makes itself. The dashboard's panels all
//! read the `${datasource}` variable, its rows are all there, and its ids are unique.
//!
//! The metric names are read out of PromQL by [`metric_names`], a small tokenizer tested at the
//! end of this file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hotline::monitoring::{MonitorConfig, ALERT_NAMES};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::app::{spawn_app, spawn_app_with};
use crate::support::db::TestDb;
use crate::support::infra::{eventually, redis_flags, redis_url, unique_prefix, TcpProxy};

const RULES: &str = "deploy/prometheus/rules.yml";
const RULES_TEST: &str = "deploy/prometheus/rules_test.yml";
const DASHBOARD: &str = "deploy/grafana/hotline.json";

/// Series Prometheus writes itself: scrape health and alert state.
const PROMETHEUS_BUILTINS: [&str; 7] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
    "ALERTS",
    "ALERTS_FOR_STATE",
];

/// The dashboard's rows, by title.
const ROWS: [&str; 6] = [
    "Webhook",
    "Cache",
    "Redis",
    "Database",
    "Calls",
    "Instances",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs promtool from the repository root and fails the test with its output unless it
/// succeeds; a missing promtool is a failure too, never a skip.
fn promtool(args: &[&str]) {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed, so the Prometheus rules cannot be checked: run \
             scripts/test.sh, which installs it (Debian package `prometheus`), or \
             `apt-get install prometheus`"
        ),
        Err(e) => panic!("promtool could not be started: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool {} fails ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

#[test]
fn prometheus_rules_pass_promtool_check() {
    promtool(&["check", "rules", RULES]);
}

#[test]
fn prometheus_rules_pass_their_unit_tests() {
    promtool(&["test", "rules", RULES_TEST]);
}

// The rules file.

/// One rule of rules.yml.
#[derive(Debug)]
struct Rule {
    record: Option<String>,
    alert: Option<String>,
    expr: String,
    for_: Option<String>,
    keep_firing_for: Option<String>,
    severity: Option<String>,
}

fn rules() -> Vec<Rule> {
    let docs = YamlLoader::load_from_str(&read(RULES)).expect("rules.yml is YAML");
    let groups = docs[0]["groups"].as_vec().expect("rules.yml has groups");
    let text = |y: &Yaml| y.as_str().map(str::to_owned);
    groups
        .iter()
        .flat_map(|g| g["rules"].as_vec().expect("a group has rules"))
        .map(|r| Rule {
            record: text(&r["record"]),
            alert: text(&r["alert"]),
            expr: text(&r["expr"]).expect("every rule has an expr"),
            for_: text(&r["for"]),
            keep_firing_for: text(&r["keep_firing_for"]),
            severity: text(&r["labels"]["severity"]),
        })
        .collect()
}

/// Seconds as Prometheus writes a duration: `10s`.
fn secs(s: u64) -> Option<String> {
    Some(format!("{s}s"))
}

#[test]
fn prometheus_alerts_mirror_the_built_in_ones() {
    let config = MonitorConfig::default();
    let rules = rules();
    let alerts: BTreeMap<&str, &Rule> = rules
        .iter()
        .filter_map(|r| Some((r.alert.as_deref()?, r)))
        .collect();
    let names: BTreeSet<&str> = alerts.keys().copied().collect();
    assert_eq!(
        names,
        ALERT_NAMES.into_iter().collect(),
        "the same alert names"
    );
    for (name, rule) in &alerts {
        let critical = matches!(*name, "error_rate_high" | "database_down");
        let severity = if critical { "critical" } else { "warning" };
        assert_eq!(rule.severity.as_deref(), Some(severity), "{name}: severity");
        // Held and resolved as in hotline: instance_lost fires after three missed heartbeats
        // (5 s apart by default) and resolves at once.
        let (hold, keep) = match *name {
            "redis_down" => (secs(config.redis_down_s), secs(config.hold_s)),
            "instance_lost" => (secs(15), None),
            _ => (secs(config.hold_s), secs(config.hold_s)),
        };
        assert_eq!(rule.for_, hold, "{name}: for");
        assert_eq!(rule.keep_firing_for, keep, "{name}: keep_firing_for");
    }
    // The thresholds are the documented defaults.
    let expr = |name: &str| {
        alerts[name]
            .expr
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let min_samples = format!(">= {}", config.min_samples);
    for (name, threshold) in [
        (
            "cache_hit_rate_low",
            format!("< {}", config.hit_rate_min_pct),
        ),
        (
            "response_time_high",
            format!("> {}", config.response_ms_max),
        ),
        (
            "error_rate_high",
            format!("> {}", config.error_rate_max_pct),
        ),
    ] {
        let e = expr(name);
        assert!(e.contains(&threshold), "{name}: {threshold} in {e}");
        assert!(e.contains(&min_samples), "{name}: {min_samples} in {e}");
    }
}

// The dashboard.

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every panel, rows and the panels nested in collapsed rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The PromQL a templating variable runs, if any: Grafana's `label_values(expr, label)` and
/// `query_result(expr)` wrap one; `label_values(label)`, `label_names()` and `metrics(re)` do
/// not name a metric.
fn template_promql(query: &str) -> Option<String> {
    let query = query.trim();
    let inner = |prefix: &str| {
        query
            .strip_prefix(prefix)
            .and_then(|q| q.trim_start().strip_prefix('('))
            .and_then(|q| q.trim_end().strip_suffix(')'))
    };
    if let Some(args) = inner("label_values") {
        // The label is the last argument; what comes before it is the series selector.
        return args.rsplit_once(',').map(|(expr, _)| expr.to_owned());
    }
    if let Some(expr) = inner("query_result") {
        return Some(expr.to_owned());
    }
    if query.starts_with("label_names") || query.starts_with("metrics") {
        return None;
    }
    Some(query.to_owned())
}

/// Every PromQL expression of the dashboard, with where it is.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "panel {}: a target without an expr",
                panel["title"]
            );
            out.push((format!("panel {}", panel["title"]), expr.to_owned()));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let query = match &var["query"] {
            Value::String(q) => q.as_str(),
            q => q["query"].as_str().unwrap_or_default(),
        };
        if let Some(expr) = template_promql(query) {
            out.push((format!("variable {}", var["name"]), expr));
        }
    }
    out
}

#[test]
fn dashboard_panels_read_the_datasource_variable_rows_exist_and_ids_are_unique() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating variables");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a `datasource` variable of type datasource for Prometheus"
    );
    let uses_variable = |ds: &Value| {
        ds == "${datasource}" || (ds["uid"] == "${datasource}" && ds["type"] == "prometheus")
    };
    let all = panels(&dashboard);
    let mut ids = BTreeSet::new();
    for panel in &all {
        let title = &panel["title"];
        assert!(
            uses_variable(&panel["datasource"]),
            "panel {title}: datasource {} is not ${{datasource}}",
            panel["datasource"]
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            let ds = &target["datasource"];
            assert!(
                ds.is_null() || uses_variable(ds),
                "panel {title}: a target's datasource {ds} is not ${{datasource}}"
            );
        }
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title}: no id"));
        assert!(ids.insert(id), "panel {title}: id {id} is used twice");
    }
    let rows: BTreeSet<&str> = all
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for row in ROWS {
        assert!(rows.contains(row), "no row {row:?}; rows: {rows:?}");
    }
}

/// The metric families of a Prometheus text exposition, histograms' and summaries' series
/// names included.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            if kind == "histogram" || kind == "summary" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

#[tokio::test]
async fn rules_and_dashboard_query_only_what_a_fresh_instance_exports() {
    let app = spawn_app().await;
    let text = app.metrics_text().await;
    app.stop().await;
    let exported = exported_names(&text);
    assert!(
        exported.contains("hotline_webhook_answers_total"),
        "/metrics of a fresh instance:\n{text}"
    );
    // No Redis configured: redis_down must not read its hotline_redis_up 0 as "down".
    assert_eq!(sample(&text, "hotline_redis_enabled"), Some(0.0), "{text}");

    let rules = rules();
    let recorded: BTreeSet<&str> = rules.iter().filter_map(|r| r.record.as_deref()).collect();
    let mut exprs: Vec<(String, String)> = rules
        .iter()
        .map(|r| {
            let name = r.record.as_deref().or(r.alert.as_deref()).unwrap_or("?");
            (format!("rule {name}"), r.expr.clone())
        })
        .collect();
    exprs.extend(dashboard_exprs(&dashboard()));

    let mut unknown = Vec::new();
    for (place, expr) in &exprs {
        let names = metric_names(expr).unwrap_or_else(|e| panic!("{place}: {e} in {expr}"));
        assert!(!names.is_empty(), "{place}: no metric in {expr}");
        for name in names {
            let known = exported.contains(&name)
                || recorded.contains(name.as_str())
                || PROMETHEUS_BUILTINS.contains(&name.as_str());
            if !known {
                unknown.push(format!("{place}: {name}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics neither exported by a fresh instance nor recorded by {RULES}:\n{}\n\
         --- /metrics of a fresh instance:\n{text}",
        unknown.join("\n")
    );
}

/// The value of the series written exactly as `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The gauges `redis_down` and `database_down` read: Redis set up and answering, and the
/// database answering the probe, then not, then again.
#[tokio::test]
async fn the_gauges_the_down_alerts_read_follow_redis_and_the_database() {
    let db = Arc::new(TestDb::postgres().await);
    let proxy = TcpProxy::start(db.pg_addr()).await;
    let via = db.pg_url_via(proxy.addr);
    let flags = redis_flags(&redis_url(), &unique_prefix());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = spawn_app_with(db, &flags, move |args| {
        args.db.database_url = via.parse().expect("a database URL")
    })
    .await;
    let gauges_become = |want: [(&'static str, f64); 3]| {
        let app = &app;
        async move {
            let ok = eventually(Duration::from_secs(15), || async {
                let text = app.metrics_text().await;
                want.iter().all(|(s, v)| sample(&text, s) == Some(*v))
            })
            .await;
            let text = app.metrics_text().await;
            let seen: Vec<_> = want.iter().map(|(s, _)| (s, sample(&text, s))).collect();
            assert!(ok, "want {want:?}, see {seen:?}");
        }
    };
    gauges_become([
        ("hotline_redis_enabled", 1.0),
        ("hotline_redis_up", 1.0),
        ("hotline_database_up", 1.0),
    ])
    .await;
    proxy.cut();
    gauges_become([
        ("hotline_redis_enabled", 1.0),
        ("hotline_redis_up", 1.0),
        ("hotline_database_up", 0.0),
    ])
    .await;
    proxy.restore();
    gauges_become([
        ("hotline_redis_enabled", 1.0),
        ("hotline_redis_up", 1.0),
        ("hotline_database_up", 1.0),
    ])
    .await;
    app.stop().await;
}

// PromQL metric names.

/// PromQL's aggregation operators: followed by `(` or by a `by`/`without` clause.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "avg",
    "count",
    "min",
    "max",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other keywords: binary operators, modifiers, and the float literals.
const KEYWORDS: [&str; 8] = [
    "and", "or", "unless", "atan2", "bool", "offset", "inf", "nan",
];

/// The metric names a PromQL expression selects (Grafana's `$variables` allowed): every
/// identifier that is not a function, an aggregation, a keyword or a label name, plus the
/// value of a `__name__="…"` matcher. Errs on an unterminated string, brace or bracket.
fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let is_ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // The index past the string literal starting at `i`, and its (unescaped) text.
    let string = |i: usize| -> Result<(usize, String), String> {
        let quote = chars[i];
        let mut j = i + 1;
        let mut text = String::new();
        while j < chars.len() {
            match chars[j] {
                '\\' if quote != '`' => {
                    if let Some(&c) = chars.get(j + 1) {
                        text.push(c);
                    }
                    j += 2;
                }
                c if c == quote => return Ok((j + 1, text)),
                c => {
                    text.push(c);
                    j += 1;
                }
            }
        }
        Err(format!("unterminated string at {i}"))
    };
    let skip_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // The index past the group opened at `i` (`{`, `[` or `(`), strings inside skipped; for a
    // label matcher group, also the metric named by `__name__="…"`.
    let group = |i: usize, names: &mut BTreeSet<String>| -> Result<usize, String> {
        let close = match chars[i] {
            '{' => '}',
            '[' => ']',
            _ => ')',
        };
        let mut j = i + 1;
        let mut last_ident = String::new();
        let mut op = String::new();
        while j < chars.len() {
            let c = chars[j];
            if c == close {
                return Ok(j + 1);
            } else if c == '"' || c == '\'' || c == '`' {
                let (end, text) = string(j)?;
                if close == '}' && last_ident == "__name__" && op == "=" {
                    names.insert(text);
                }
                j = end;
            } else if is_ident_start(c) {
                let start = j;
                while j < chars.len() && is_ident(chars[j]) {
                    j += 1;
                }
                last_ident = chars[start..j].iter().collect();
                op.clear();
            } else if matches!(c, '=' | '!' | '~') {
                op.push(c);
                j += 1;
            } else if c == '(' || c == '{' || c == '[' {
                return Err(format!("unexpected {c:?} at {j}"));
            } else {
                if c == ',' {
                    last_ident.clear();
                    op.clear();
                }
                j += 1;
            }
        }
        Err(format!("unterminated {:?} at {i}", chars[i]))
    };
    let mut depth = 0i32;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            i = string(i)?.0;
        } else if c == '{' || c == '[' {
            i = group(i, &mut names)?;
        } else if c == '$' {
            // A Grafana variable: `$name` or `${name}` / `${name:format}`.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = group(i, &mut BTreeSet::new())?;
            } else {
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (`5m`, `1h30m`, `1e-3`, `0x1f`).
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || (matches!(chars[i], '+' | '-') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let next = skip_space(i);
            let before_paren = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&lower.as_str()) {
                if before_paren {
                    i = group(next, &mut BTreeSet::new())?;
                }
            } else if KEYWORDS.contains(&lower.as_str())
                || AGGREGATIONS.contains(&lower.as_str())
                || before_paren
            {
                // A keyword, an aggregation, or a function call.
            } else {
                names.insert(word);
            }
        } else {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth < 0 {
                return Err(format!("unbalanced ')' at {i}"));
            }
            i += 1;
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    Ok(names)
}

fn names(expr: &str) -> Vec<String> {
    metric_names(expr)
        .unwrap_or_else(|e| panic!("{e}: {expr}"))
        .into_iter()
        .collect()
}

#[test]
fn tokenizer_skips_functions_aggregations_and_label_lists() {
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (job, le) (rate(hotline_http_request_duration_seconds_bucket{route="/webhooks/elevenlabs/conversation-initiation"}[5m])))"#
        ),
        ["hotline_http_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names("sum(rate(a_total[5m])) without (instance) / ignoring(kind) group_left(source) b"),
        ["a_total", "b"]
    );
    assert_eq!(
        names("x > bool 5 and on(job, instance) y unless z offset 1h30m atan2 w"),
        ["w", "x", "y", "z"]
    );
    assert_eq!(
        names("topk(3, count_values(\"v\", build_info)) or vector(1) + Inf - NaN"),
        ["build_info"]
    );
}

#[test]
fn tokenizer_skips_strings_matchers_and_grafana_variables() {
    // A brace, a bracket and a parenthesis inside strings, and metric-like words in values.
    assert_eq!(
        names(r#"a{route=~"/api/{id}|up(", status!="5xx]", q='b_total'}"#),
        ["a"]
    );
    assert_eq!(
        names(
            r#"sum by (source) (rate(hotline_webhook_answers_total{instance=~"$instance"}[$__rate_interval])) / ${denominator:raw}"#
        ),
        ["hotline_webhook_answers_total"]
    );
    // A recording rule's colons, and a metric named in a __name__ matcher.
    assert_eq!(
        names(r#"hotline:cache_hit:ratio_rate5m > 0 or {__name__="up", job="hotline"}"#),
        ["hotline:cache_hit:ratio_rate5m", "up"]
    );
    // Subqueries, scientific notation and comments.
    assert_eq!(
        names("max_over_time(rate(c[1m])[10m:30s]) > 1e-3 # not_a_metric\n * 2"),
        ["c"]
    );
    assert!(metric_names(r#"a{b="c}"#).is_err(), "unterminated string");
    assert!(metric_names("sum(rate(a[5m])").is_err(), "unbalanced");
}

#[test]
fn template_queries_give_their_selector() {
    assert_eq!(
        template_promql("label_values(hotline_redis_up, instance)").as_deref(),
        Some("hotline_redis_up")
    );
    assert_eq!(
        template_promql(r#"label_values(up{job=~"a,b"}, instance)"#).as_deref(),
        Some(r#"up{job=~"a,b"}"#)
    );
    assert_eq!(template_promql("label_values(job)"), None);
    assert_eq!(
        template_promql("query_result(topk(5, x))").as_deref(),
        Some("topk(5, x)")
    );
}
