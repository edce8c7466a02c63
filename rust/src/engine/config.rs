//! Engine configuration: validation, window names and the column layout.

use crate::error::{TxError, TxResult};

/// Default card windows: 1 min, 1 h, 24 h, 7 d, 30 d.
pub const DEFAULT_CARD_WINDOWS_MS: [i64; 5] =
    [60_000, 3_600_000, 86_400_000, 604_800_000, 2_592_000_000];
/// Default merchant windows: 24 h, 7 d.
pub const DEFAULT_MERCHANT_WINDOWS_MS: [i64; 2] = [86_400_000, 604_800_000];
/// Default user windows: 24 h.
pub const DEFAULT_USER_WINDOWS_MS: [i64; 1] = [86_400_000];
/// Suggested merchant label windows (label features are off by default): 7 d, 30 d.
pub const SUGGESTED_MERCHANT_LABEL_WINDOWS_MS: [i64; 2] = [604_800_000, 2_592_000_000];
/// Suggested card label windows (label features are off by default): 30 d.
pub const SUGGESTED_CARD_LABEL_WINDOWS_MS: [i64; 1] = [2_592_000_000];
/// Largest number of label windows per kind.
pub const MAX_LABEL_WINDOWS: usize = 16;
/// Default allowed lateness: 1 h.
pub const DEFAULT_ALLOWED_LATENESS_MS: i64 = 3_600_000;
/// Default number of state shards per entity kind.
pub const DEFAULT_SHARDS: usize = 64;

/// Longest accepted window or lateness (100 years); keeps every time sum far from overflow.
pub const MAX_DURATION_MS: i64 = 100 * 366 * 86_400_000;
/// Largest number of shards per entity kind.
pub const MAX_SHARDS: usize = 1 << 16;
/// Merchant state stores `u32` millisecond offsets, so `W_max + L` of merchants must fit.
pub const MAX_MERCHANT_RETENTION_MS: i64 = u32::MAX as i64;

/// Number of row-local columns (`amount_base` … `channel`).
pub(crate) const BASE_COLUMNS: usize = 6;
/// Number of card columns after the four per-window aggregates.
pub(crate) const CARD_TAIL_COLUMNS: usize = 8;

/// Configuration of a [`super::FeatureEngine`].
///
/// Windows are listed in column order; every length is a positive whole number of seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Card window lengths in milliseconds (column order).
    pub card_windows_ms: Vec<i64>,
    /// Merchant window lengths in milliseconds (column order).
    pub merchant_windows_ms: Vec<i64>,
    /// User window lengths in milliseconds (column order).
    pub user_windows_ms: Vec<i64>,
    /// Allowed lateness `L` in milliseconds (retention and the default idle TTL).
    pub allowed_lateness_ms: i64,
    /// Idle TTL of every entity kind; `None` means `W_max + L` of each kind.
    pub idle_ttl_ms: Option<i64>,
    /// Number of state shards per entity kind.
    pub shards: usize,
    /// Worker threads; `None` uses rayon's global pool. Not part of snapshots.
    pub threads: Option<usize>,
    /// Merchant label windows in milliseconds (column order); empty: no merchant label
    /// columns. Windows are on the labels' known time (see docs/features.md).
    pub merchant_label_windows_ms: Vec<i64>,
    /// Card label windows in milliseconds (column order); empty: no card label columns.
    pub card_label_windows_ms: Vec<i64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            card_windows_ms: DEFAULT_CARD_WINDOWS_MS.to_vec(),
            merchant_windows_ms: DEFAULT_MERCHANT_WINDOWS_MS.to_vec(),
            user_windows_ms: DEFAULT_USER_WINDOWS_MS.to_vec(),
            allowed_lateness_ms: DEFAULT_ALLOWED_LATENESS_MS,
            idle_ttl_ms: None,
            shards: DEFAULT_SHARDS,
            threads: None,
            merchant_label_windows_ms: Vec::new(),
            card_label_windows_ms: Vec::new(),
        }
    }
}

/// Name suffix of a window length: `<n>d` for whole numbers of days from two days up, else
/// the largest of `h`, `m`, `s` dividing it exactly (so 24 hours is `24h`, 48 hours `2d`).
///
/// The length must be a positive whole number of seconds (checked by
/// [`EngineConfig::validate`]).
pub fn window_suffix(window_ms: i64) -> String {
    const DAY_MS: i64 = 86_400_000;
    if window_ms % DAY_MS == 0 && window_ms >= 2 * DAY_MS {
        return format!("{}d", window_ms / DAY_MS);
    }
    for (unit, unit_ms) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if window_ms % unit_ms == 0 {
            return format!("{}{unit}", window_ms / unit_ms);
        }
    }
    format!("{window_ms}ms")
}

fn check_windows(kind: &str, windows: &[i64]) -> TxResult<()> {
    if windows.is_empty() {
        return Err(TxError::Config(format!("{kind} windows must not be empty")));
    }
    check_window_values(kind, windows)
}

/// Label windows may be empty (that kind's label columns are off), at most
/// [`MAX_LABEL_WINDOWS`].
fn check_label_windows(kind: &str, windows: &[i64]) -> TxResult<()> {
    if windows.len() > MAX_LABEL_WINDOWS {
        return Err(TxError::Config(format!(
            "at most {MAX_LABEL_WINDOWS} {kind} windows, got {}",
            windows.len()
        )));
    }
    check_window_values(kind, windows)
}

fn check_window_values(kind: &str, windows: &[i64]) -> TxResult<()> {
    for &w in windows {
        if w <= 0 || w % 1000 != 0 || w > MAX_DURATION_MS {
            return Err(TxError::Config(format!(
                "{kind} window {w} ms is not a positive whole number of seconds up to {MAX_DURATION_MS} ms"
            )));
        }
    }
    let mut sorted = windows.to_vec();
    sorted.sort_unstable();
    if sorted.windows(2).any(|p| p[0] == p[1]) {
        return Err(TxError::Config(format!(
            "duplicate {kind} windows: {windows:?}"
        )));
    }
    Ok(())
}

impl EngineConfig {
    /// Check every value; the error names the offending one.
    pub fn validate(&self) -> TxResult<()> {
        check_windows("card", &self.card_windows_ms)?;
        check_windows("merchant", &self.merchant_windows_ms)?;
        check_windows("user", &self.user_windows_ms)?;
        check_label_windows("merchant label", &self.merchant_label_windows_ms)?;
        check_label_windows("card label", &self.card_label_windows_ms)?;
        let lateness = self.allowed_lateness_ms;
        if !(0..=MAX_DURATION_MS).contains(&lateness) {
            return Err(TxError::Config(format!(
                "allowed_lateness_ms must be in [0, {MAX_DURATION_MS}]: {lateness}"
            )));
        }
        let merchant_retention = max_window(&self.merchant_windows_ms) + lateness;
        if merchant_retention > MAX_MERCHANT_RETENTION_MS {
            return Err(TxError::Config(format!(
                "longest merchant window + allowed_lateness_ms must be at most \
                 {MAX_MERCHANT_RETENTION_MS} ms: {merchant_retention}"
            )));
        }
        if let Some(ttl) = self.idle_ttl_ms {
            if !(0..=2 * MAX_DURATION_MS).contains(&ttl) {
                return Err(TxError::Config(format!(
                    "idle_ttl_ms must be in [0, {}]: {ttl}",
                    2 * MAX_DURATION_MS
                )));
            }
        }
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(TxError::Config(format!(
                "shards must be in [1, {MAX_SHARDS}]: {}",
                self.shards
            )));
        }
        if self.threads == Some(0) {
            return Err(TxError::Config("threads must be at least 1".into()));
        }
        Ok(())
    }

    /// Column names, in output order (see docs/features.md).
    pub fn feature_names(&self) -> Vec<String> {
        let card: Vec<String> = self
            .card_windows_ms
            .iter()
            .map(|&w| window_suffix(w))
            .collect();
        let longest = window_suffix(max_window(&self.card_windows_ms));
        let mut names: Vec<String> = [
            "amount_base",
            "log_amount",
            "hour",
            "dow",
            "is_weekend",
            "channel",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for aggregate in ["count", "sum", "mean", "max"] {
            names.extend(card.iter().map(|s| format!("card_{aggregate}_{s}")));
        }
        names.extend([
            format!("card_amount_ratio_{longest}"),
            format!("card_amount_z_{longest}"),
            "card_secs_since_prev".to_string(),
            "card_km_from_prev".to_string(),
            "card_kmh_from_prev".to_string(),
            format!("card_new_country_{longest}"),
            format!("card_new_merchant_{longest}"),
            format!("card_category_share_{longest}"),
        ]);
        names.extend(
            self.merchant_windows_ms
                .iter()
                .map(|&w| format!("merchant_count_{}", window_suffix(w))),
        );
        names.extend(
            self.user_windows_ms
                .iter()
                .map(|&w| format!("user_distinct_cards_{}", window_suffix(w))),
        );
        for prefix in ["merchant_fraud_labels", "merchant_fraud_rate"] {
            names.extend(
                self.merchant_label_windows_ms
                    .iter()
                    .map(|&w| format!("{prefix}_{}", window_suffix(w))),
            );
        }
        names.extend(
            self.card_label_windows_ms
                .iter()
                .map(|&w| format!("card_fraud_labels_{}", window_suffix(w))),
        );
        names
    }

    /// Idle TTL of one entity kind whose longest window is `w_max`.
    pub(crate) fn ttl_for(&self, w_max: i64) -> i64 {
        self.idle_ttl_ms.unwrap_or(w_max + self.allowed_lateness_ms)
    }
}

/// Longest window of a (validated, non-empty) list.
pub(crate) fn max_window(windows: &[i64]) -> i64 {
    windows.iter().copied().max().unwrap_or(0)
}

/// Where each entity kind's columns start in an output row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Columns written by the card shards (row-local columns included).
    pub card_cols: usize,
    /// First merchant column.
    pub merchant_col: usize,
    /// First user column.
    pub user_col: usize,
    /// First label column (label columns run to the end of the row).
    pub label_col: usize,
    /// Total number of columns.
    pub width: usize,
}

impl Layout {
    pub(crate) fn new(config: &EngineConfig) -> Self {
        let card_cols = BASE_COLUMNS + 4 * config.card_windows_ms.len() + CARD_TAIL_COLUMNS;
        let merchant_col = card_cols;
        let user_col = merchant_col + config.merchant_windows_ms.len();
        let label_col = user_col + config.user_windows_ms.len();
        Layout {
            card_cols,
            merchant_col,
            user_col,
            label_col,
            width: label_col
                + 2 * config.merchant_label_windows_ms.len()
                + config.card_label_windows_ms.len(),
        }
    }
}

#[cfg(test)]
mod suffix_tests {
    use super::window_suffix;

    #[test]
    fn window_suffixes() {
        assert_eq!(window_suffix(60_000), "1m");
        assert_eq!(window_suffix(90_000), "90s");
        assert_eq!(window_suffix(3_600_000), "1h");
        assert_eq!(window_suffix(86_400_000), "24h");
        assert_eq!(window_suffix(172_800_000), "2d");
        assert_eq!(window_suffix(2_592_000_000), "30d");
    }
}
