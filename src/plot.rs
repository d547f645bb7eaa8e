//! Plots.

use std::path::{Path, PathBuf};

/// Draws every plot whose data is under `out`.
pub fn plot_all(_out: &Path) -> crate::Result<Vec<(PathBuf, String)>> {
    Ok(Vec::new())
}
