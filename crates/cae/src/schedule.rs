//! Step decay of the learning rate, as PyTorch's `MultiStepLR`: `--lr-drop 30` trains epochs
//! 1-29 at `--lr` and every epoch from 30 on at a tenth of it; `--lr-drop 20,30:0.5` halves the
//! rate at epoch 20 and again at 30.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

/// The factor when none is written.
pub(crate) const DEFAULT_FACTOR: f64 = 0.1;

/// How long a run trains, and how its learning rate falls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSettings {
    /// Epochs the run trains in all (`--epochs`), those before a resume included.
    pub epochs: usize,
    /// Lower the learning rate at these epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_drop: Option<LrDrop>,
}

/// The epochs at which the learning rate is multiplied by a factor (`--lr-drop`), written
/// `EPOCH[,EPOCH...][:FACTOR]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LrDrop {
    /// The epochs (1-based, increasing) at whose start the rate is multiplied by `factor`.
    pub epochs: Vec<usize>,
    /// What the rate is multiplied by at each of those epochs: above 0 and at most 1, 0.1 when
    /// none is written.
    pub factor: f64,
}

impl LrDrop {
    /// The learning rate of epoch `epoch` (1-based) for a run started at `lr`.
    pub(crate) fn lr_at(&self, lr: f64, epoch: usize) -> f64 {
        let drops = self.epochs.iter().filter(|&&e| e <= epoch).count();
        (0..drops).fold(lr, |lr, _| lr * self.factor)
    }
}

impl FromStr for LrDrop {
    type Err = anyhow::Error;

    /// ```
    /// use cae::schedule::LrDrop;
    /// let drop: LrDrop = "20,30:0.5".parse().unwrap();
    /// assert_eq!((drop.epochs, drop.factor), (vec![20, 30], 0.5));
    /// assert_eq!("30".parse::<LrDrop>().unwrap().factor, 0.1);
    /// ```
    fn from_str(text: &str) -> Result<Self> {
        const FORM: &str = "write EPOCH[,EPOCH...][:FACTOR], e.g. 30 or 20,30:0.5";
        let (epochs, factor) = match text.split_once(':') {
            Some((epochs, factor)) => {
                let factor: f64 = factor.trim().parse().with_context(|| {
                    format!("--lr-drop `{text}`: `{factor}` is not a number; {FORM}")
                })?;
                (epochs, factor)
            }
            None => (text, DEFAULT_FACTOR),
        };
        let epochs = epochs
            .split(',')
            .map(|e| {
                e.trim()
                    .parse::<usize>()
                    .with_context(|| format!("--lr-drop `{text}`: `{e}` is not an epoch; {FORM}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let drop = LrDrop { epochs, factor };
        drop.validate()
            .with_context(|| format!("--lr-drop `{text}`"))?;
        Ok(drop)
    }
}

impl LrDrop {
    fn validate(&self) -> Result<()> {
        ensure!(
            self.factor.is_finite() && self.factor > 0.0,
            "the factor must be a positive number, not {}",
            self.factor
        );
        // A factor above 1 would raise the rate at each "drop": a typo (2 for 0.2, or the
        // divisor instead of the factor) far more likely than intended.
        ensure!(
            self.factor <= 1.0,
            "the factor multiplies the rate, so it must be at most 1, not {} (for 1/{}, write {})",
            self.factor,
            self.factor,
            1.0 / self.factor
        );
        if self.epochs.first().is_some_and(|&e| e < 2) {
            bail!(
                "the first drop must come at epoch 2 or later (for a lower rate throughout, set --lr)"
            );
        }
        ensure!(
            self.epochs.windows(2).all(|w| w[0] < w[1]),
            "the epochs must increase"
        );
        Ok(())
    }
}

impl fmt::Display for LrDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let epochs: Vec<String> = self.epochs.iter().map(usize::to_string).collect();
        write!(f, "{}:{}", epochs.join(","), self.factor)
    }
}

impl TryFrom<String> for LrDrop {
    type Error = anyhow::Error;

    fn try_from(text: String) -> Result<Self> {
        text.parse()
    }
}

impl From<LrDrop> for String {
    fn from(drop: LrDrop) -> String {
        drop.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::LrDrop;

    #[test]
    fn the_rate_drops_at_the_start_of_each_listed_epoch() {
        let drop: LrDrop = "3,5".parse().unwrap();
        let rates: Vec<f64> = (1..=6).map(|e| drop.lr_at(1.0, e)).collect();
        assert_eq!(rates, [1.0, 1.0, 0.1, 0.1, 0.1 * 0.1, 0.1 * 0.1]);
        let half: LrDrop = "2:0.5".parse().unwrap();
        assert_eq!(half.lr_at(1e-3, 1), 1e-3);
        assert_eq!(half.lr_at(1e-3, 9), 5e-4);
    }

    #[test]
    fn written_and_read_back_the_same() {
        for text in ["30", "20,30:0.5", " 4 , 7 : 0.2 "] {
            let drop: LrDrop = text.parse().unwrap();
            let json = serde_json::to_string(&drop).unwrap();
            assert_eq!(serde_json::from_str::<LrDrop>(&json).unwrap(), drop);
        }
        assert_eq!("30".parse::<LrDrop>().unwrap().to_string(), "30:0.1");
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (text, needle) in [
            ("", "is not an epoch"),
            ("x", "is not an epoch"),
            ("10:", "is not a number"),
            ("10:0", "positive"),
            ("10:nan", "positive"),
            ("10:2", "at most 1, not 2 (for 1/2, write 0.5)"),
            ("10:inf", "positive"),
            ("1", "epoch 2 or later"),
            ("10,5", "increase"),
            ("10,10", "increase"),
        ] {
            let err = format!("{:#}", text.parse::<LrDrop>().unwrap_err());
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains("--lr-drop"), "{text}: {err}");
        }
    }
}
