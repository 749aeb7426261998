//! Schedules: validation of a task definition and the computation of its runs.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use pgnm_protocol::Route;
use pgnm_protocol::task::{MAX_INTERVAL_MS, MIN_INTERVAL_MS, TIMEOUT_RANGE_MS, TaskAddArgs};

/// Longest task name (request ids embed it).
pub const MAX_TASK_NAME: usize = 64;

/// Parses a cron expression: 5 fields (minute first) or 6 (seconds first), UTC.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {expr}"),
        6 => expr.to_owned(),
        n => return Err(format!("expected 5 fields (or 6 with seconds first), found {n}")),
    };
    cron::Schedule::from_str(&full).map_err(|e| e.to_string())
}

/// Checks a task definition; `at` is its path in the request (`args`, `set`).
pub fn validate(spec: &TaskAddArgs, at: &str) -> Result<(), String> {
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= MAX_TASK_NAME
        && spec.name.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
    if !name_ok {
        return Err(format!("{at}.name: use 1 to {MAX_TASK_NAME} of [A-Za-z0-9._:-], got {:?}", spec.name));
    }
    if let Err(e) = Route::resolve(&spec.command, spec.role.as_deref()) {
        let field = match e {
            pgnm_protocol::RouteError::UnknownCommand(_) => "command",
            _ => "role",
        };
        return Err(format!("{at}.{field}: {e}"));
    }
    match (spec.interval_ms, &spec.cron) {
        (Some(_), Some(_)) => return Err(format!("{at}.intervalMs: give intervalMs or cron, not both")),
        (None, None) => return Err(format!("{at}.intervalMs: give intervalMs or cron")),
        (Some(i), None) if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&i) => {
            return Err(format!("{at}.intervalMs: must be between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS}, got {i}"));
        }
        (None, Some(c)) => {
            parse_cron(c).map_err(|e| format!("{at}.cron: invalid cron expression {c:?}: {e}"))?;
        }
        _ => {}
    }
    if !TIMEOUT_RANGE_MS.contains(&spec.timeout_ms) {
        return Err(format!(
            "{at}.timeoutMs: must be between {} and {}, got {}",
            TIMEOUT_RANGE_MS.start(),
            TIMEOUT_RANGE_MS.end(),
            spec.timeout_ms
        ));
    }
    Ok(())
}

fn next_cron(expr: &str, after_ms: i64) -> Option<i64> {
    let schedule = parse_cron(expr).ok()?;
    let after: DateTime<Utc> = DateTime::from_timestamp_millis(after_ms)?;
    schedule.after(&after).next().map(|t| t.timestamp_millis())
}

/// Returns the first run of a new (or rescheduled) task.
pub fn first_run(spec: &TaskAddArgs, now_ms: i64) -> i64 {
    match (&spec.cron, spec.interval_ms) {
        (Some(c), _) => next_cron(c, now_ms).unwrap_or(i64::MAX / 2),
        (None, Some(i)) => now_ms + i as i64,
        (None, None) => i64::MAX / 2,
    }
}

/// Returns the run after the tick `due_ms`, as seen at `now_ms`: the first tick of
/// the schedule strictly after now, so missed ticks coalesce into the one being
/// run. Interval ticks stay aligned to the original schedule.
pub fn next_run(spec: &TaskAddArgs, due_ms: i64, now_ms: i64) -> i64 {
    match (&spec.cron, spec.interval_ms) {
        (Some(c), _) => next_cron(c, now_ms.max(due_ms)).unwrap_or(i64::MAX / 2),
        (None, Some(i)) => {
            let i = (i as i64).max(1);
            let behind = (now_ms - due_ms).max(0);
            due_ms + i * (behind / i + 1)
        }
        (None, None) => i64::MAX / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(interval: Option<u64>, cron: Option<&str>) -> TaskAddArgs {
        TaskAddArgs {
            name: "t".into(),
            command: "ping".into(),
            role: Some("checker".into()),
            args: None,
            interval_ms: interval,
            cron: cron.map(str::to_owned),
            enabled: true,
            allow_overlap: false,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn missed_interval_ticks_coalesce_and_stay_aligned() {
        let t = task(Some(1000), None);
        assert_eq!(next_run(&t, 10_000, 10_050), 11_000);
        // Five ticks missed: one run now, the next on the original grid.
        assert_eq!(next_run(&t, 10_000, 15_400), 16_000);
        assert_eq!(next_run(&t, 10_000, 16_000), 17_000);
    }

    #[test]
    fn cron_runs_on_its_expression() {
        let t = task(None, Some("*/5 * * * *"));
        let now = DateTime::parse_from_rfc3339("2026-01-01T10:02:30Z").unwrap().timestamp_millis();
        let next = DateTime::parse_from_rfc3339("2026-01-01T10:05:00Z").unwrap().timestamp_millis();
        assert_eq!(first_run(&t, now), next);
        let secs = task(None, Some("*/10 * * * * *"));
        assert_eq!(first_run(&secs, now), now + 10_000);
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let mut t = task(Some(1000), None);
        t.command = "launch".into();
        assert!(validate(&t, "args").unwrap_err().starts_with("args.command: unknown command"));
        let mut t = task(Some(1000), None);
        t.command = "getBestNode".into();
        t.role = Some("scheduler".into());
        assert!(validate(&t, "args").unwrap_err().starts_with("args.role:"));
        assert!(validate(&task(Some(5), None), "args").unwrap_err().starts_with("args.intervalMs"));
        assert!(validate(&task(None, None), "args").unwrap_err().starts_with("args.intervalMs"));
        assert!(validate(&task(None, Some("every day")), "args").unwrap_err().starts_with("args.cron"));
        assert!(validate(&task(None, Some("61 * * * *")), "args").unwrap_err().starts_with("args.cron"));
        assert!(validate(&task(None, Some("*/5 * * * *")), "args").is_ok());
    }
}
