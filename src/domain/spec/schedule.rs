//! When a source runs: a period or a cron expression (UTC), with jitter.

use super::*;

/// When a source runs: every `every_secs`, or at the times of the `cron`
/// expression (UTC; exactly one of the two), plus a random delay of up to
/// `jitter_secs` so that many sources with one period do not fire together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<u64>,
    /// 5 fields (minute hour day-of-month month day-of-week), or 6 with
    /// seconds first; UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default)]
    pub jitter_secs: u64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            every_secs: Some(300),
            cron: None,
            jitter_secs: 0,
        }
    }
}

/// Longest jitter of a cron schedule: one hour.
pub const MAX_CRON_JITTER_SECS: u64 = 3600;
/// Longest cron expression, in bytes.
pub const MAX_CRON_LEN: usize = 256;

/// Parses a cron expression: 5 fields, or 6 with seconds first (croner's
/// syntax: ranges, steps, lists, names, `L`, `#`, `?`), evaluated in UTC.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    if expr.len() > MAX_CRON_LEN {
        return Err(format!("must be at most {MAX_CRON_LEN} bytes"));
    }
    let fields = expr.split_whitespace().count();
    if fields != 5 && fields != 6 {
        return Err(format!(
            "must have 5 fields, or 6 with seconds first (found {fields})"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("not a valid cron expression: {e}"))
}

impl Schedule {
    /// The first time the source is due strictly after `from`, before jitter:
    /// `from + every_secs`, or the cron expression's next time.
    pub fn next_after(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Some(expr) = &self.cron {
            let cron = parse_cron(expr).ok()?;
            return cron.find_next_occurrence(&from, false).ok();
        }
        let secs = self.every_secs.unwrap_or(300);
        Some(from + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000)))
    }

    /// A typical gap between runs: `every_secs`, or the gap between the cron
    /// expression's next two times (an hour when it has none). The failure
    /// back-off of a source starts from it.
    pub fn period(&self) -> std::time::Duration {
        let now = Utc::now();
        self.next_after(now)
            .and_then(|a| Some((a, self.next_after(a)?)))
            .and_then(|(a, b)| (b - a).to_std().ok())
            .unwrap_or(std::time::Duration::from_secs(3600))
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        match (&self.every_secs, &self.cron) {
            (Some(_), Some(_)) => Err(SpecError::new(
                "schedule",
                "every_secs and cron are exclusive: give one of them",
            )),
            (None, None) => Err(SpecError::new("schedule", "needs every_secs or cron")),
            (Some(every), None) => {
                if *every < 1 || *every > MAX_EVERY_SECS {
                    return Err(SpecError::new(
                        "schedule.every_secs",
                        format!("must be between 1 and {MAX_EVERY_SECS}"),
                    ));
                }
                if self.jitter_secs > *every {
                    return Err(SpecError::new(
                        "schedule.jitter_secs",
                        "must not exceed schedule.every_secs",
                    ));
                }
                Ok(())
            }
            (None, Some(expr)) => {
                let cron = parse_cron(expr).map_err(|m| SpecError::new("schedule.cron", m))?;
                if cron.find_next_occurrence(&Utc::now(), false).is_err() {
                    return Err(SpecError::new("schedule.cron", "never fires"));
                }
                if self.jitter_secs > MAX_CRON_JITTER_SECS {
                    return Err(SpecError::new(
                        "schedule.jitter_secs",
                        format!("must be at most {MAX_CRON_JITTER_SECS} with a cron schedule"),
                    ));
                }
                Ok(())
            }
        }
    }
}
