//! What a reload must still know after a restart, kept in
//! `<data_dir>/versions/<name>/`:
//!
//! - `kept/`: the version that last went live (its component, its
//!   manifest's text, where they were): a restart compares the folder's
//!   version with it for new grants;
//! - `previous/`: the version it replaced, while the new one is in its
//!   rollback window; a rollback makes it the kept one again;
//! - the versions rolled back, refused until their files change: a
//!   restart serves the kept version instead.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::Files;
use crate::config::{HostConfig, PluginSpec, manifest_from_text};

/// Where each plugin's kept versions and refusals live.
pub struct Kept {
    dir: PathBuf,
}

/// One version kept: its id and where its files were in the plugins
/// folder (its manifest's relative paths resolve from there).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slot {
    version: String,
    component: PathBuf,
    #[serde(default)]
    manifest: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    #[serde(default)]
    kept: Option<Slot>,
    #[serde(default)]
    previous: Option<Slot>,
    /// Versions rolled back.
    #[serde(default)]
    refused: Vec<String>,
}

const KEPT: &str = "kept";
const PREVIOUS: &str = "previous";

impl Kept {
    pub fn new(data_dir: &Path) -> Self {
        Kept {
            dir: data_dir.join("versions"),
        }
    }

    fn meta(&self, name: &str) -> Meta {
        std::fs::read(self.dir.join(name).join("versions.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_meta(&self, name: &str, meta: &Meta) -> Result<()> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = dir.join(".versions.json");
        std::fs::write(&tmp, serde_json::to_vec_pretty(meta)?)?;
        std::fs::rename(&tmp, dir.join("versions.json"))?;
        Ok(())
    }

    fn warn(name: &str, what: &str, result: Result<()>) {
        if let Err(e) = result {
            tracing::warn!(
                plugin = name,
                "cannot keep {what} for after a restart: {e:#}"
            );
        }
    }

    /// `version` of `name` went live with these files; the version it
    /// replaced is kept as the previous one until [`Kept::passed`].
    pub fn went_live(&self, name: &str, version: &str, spec: &PluginSpec, files: &Files) {
        Self::warn(
            name,
            "the version that went live",
            (|| {
                let mut meta = self.meta(name);
                if meta.kept.as_ref().is_some_and(|k| k.version == version) {
                    return Ok(());
                }
                let dir = self.dir.join(name);
                if meta.kept.is_some() {
                    let _ = std::fs::remove_dir_all(dir.join(PREVIOUS));
                    std::fs::rename(dir.join(KEPT), dir.join(PREVIOUS))?;
                    meta.previous = meta.kept.take();
                }
                let slot = dir.join(KEPT);
                let _ = std::fs::remove_dir_all(&slot);
                std::fs::create_dir_all(&slot)?;
                std::fs::write(slot.join("component.wasm"), &files.component)?;
                if let Some(text) = &files.manifest {
                    std::fs::write(slot.join("manifest.toml"), text)?;
                }
                meta.kept = Some(Slot {
                    version: version.to_string(),
                    component: spec.component.clone(),
                    manifest: spec.manifest.clone(),
                });
                self.write_meta(name, &meta)
            })(),
        );
    }

    /// The kept version passed its rollback window: the previous one is
    /// not needed any more.
    pub fn passed(&self, name: &str) {
        Self::warn(
            name,
            "a passed window",
            (|| {
                let mut meta = self.meta(name);
                if meta.previous.take().is_some() {
                    let _ = std::fs::remove_dir_all(self.dir.join(name).join(PREVIOUS));
                    self.write_meta(name, &meta)?;
                }
                Ok(())
            })(),
        );
    }

    /// `version` of `name` was rolled back: refused, after a restart too,
    /// and the previous version is the kept one again.
    pub fn rolled_back(&self, name: &str, version: &str) {
        Self::warn(
            name,
            "the rollback",
            (|| {
                let mut meta = self.meta(name);
                if !meta.refused.iter().any(|v| v == version) {
                    meta.refused.push(version.to_string());
                }
                if meta.kept.as_ref().is_some_and(|k| k.version == version)
                    && let Some(previous) = meta.previous.take()
                {
                    let dir = self.dir.join(name);
                    let _ = std::fs::remove_dir_all(dir.join(KEPT));
                    std::fs::rename(dir.join(PREVIOUS), dir.join(KEPT))?;
                    meta.kept = Some(previous);
                }
                self.write_meta(name, &meta)
            })(),
        );
    }

    pub fn refused(&self, name: &str, version: &str) -> bool {
        self.meta(name).refused.iter().any(|v| v == version)
    }

    /// The kept version of `name`: its spec (its manifest parsed as it was
    /// written), its files and its id.
    pub fn load(&self, name: &str, host: &HostConfig) -> Option<(PluginSpec, Files, String)> {
        let slot = self.meta(name).kept?;
        let dir = self.dir.join(name).join(KEPT);
        let component = std::fs::read(dir.join("component.wasm")).ok()?;
        let manifest = match &slot.manifest {
            Some(_) => Some(std::fs::read(dir.join("manifest.toml")).ok()?),
            None => None,
        };
        let text = manifest
            .as_deref()
            .map(|t| String::from_utf8_lossy(t).into_owned());
        match manifest_from_text(
            name,
            &slot.component,
            slot.manifest.as_deref(),
            text.as_deref(),
            &host.limits,
        ) {
            Ok(spec) => Some((
                spec,
                Files {
                    component,
                    manifest,
                },
                slot.version,
            )),
            Err(e) => {
                tracing::warn!(plugin = name, "the kept version cannot be read: {e:#}");
                None
            }
        }
    }
}
