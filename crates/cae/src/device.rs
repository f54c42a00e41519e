//! Which backend runs the model, chosen at run time.

use std::str::FromStr;

use anyhow::{Result, bail};
use burn::tensor::Device;

/// A backend compiled into this binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Burn's pure-Rust CPU backend (the default).
    #[default]
    Flex,
    /// NVIDIA GPUs (cargo feature `cuda`).
    Cuda,
    /// Any GPU through wgpu (cargo feature `wgpu`).
    Wgpu,
}

impl FromStr for Backend {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "flex" | "cpu" => Ok(Self::Flex),
            "cuda" => Ok(Self::Cuda),
            "wgpu" => Ok(Self::Wgpu),
            other => bail!("unknown device `{other}`: use flex (CPU), cuda or wgpu"),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
        })
    }
}

impl Backend {
    /// The device for inference (no autodiff).
    pub fn device(self) -> Result<Device> {
        match self {
            Self::Flex => Ok(Device::flex()),
            #[cfg(feature = "cuda")]
            Self::Cuda => Ok(Device::cuda(0)),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(Device::wgpu(Default::default())),
            #[allow(unreachable_patterns)]
            other => bail!(
                "this cae was built without the `{other}` backend; rebuild with `cargo build --release --features {other}`"
            ),
        }
    }
}

/// `bytes` in GiB, for messages.
pub(crate) fn gib(bytes: f64) -> f64 {
    bytes / f64::from(1u32 << 30)
}

/// Memory this process can still use: `MemAvailable` from `/proc/meminfo`, capped by the
/// cgroup v2 limit when there is one.
pub(crate) fn host_memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let available = kib * 1024;
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    Some(limit.map_or(available, |limit| limit.min(available)))
}
