//! What a rollback must still know after a restart: the version of each
//! plugin that last served well (started, or passed its rollback window),
//! and the versions rolled back, refused until their files change. Kept in
//! `<data_dir>/versions/<name>/`: the component, the manifest's text and
//! `kept.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::Files;
use crate::config::{HostConfig, PluginSpec, manifest_from_text};

/// Where each plugin's kept version and refusals live.
pub struct Kept {
    dir: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    /// The kept version, if one is.
    #[serde(default)]
    version: Option<String>,
    /// Where its files were in the plugins folder (its relative paths
    /// resolve from there).
    #[serde(default)]
    component: Option<PathBuf>,
    #[serde(default)]
    manifest: Option<PathBuf>,
    /// Versions rolled back.
    #[serde(default)]
    refused: Vec<String>,
}

impl Kept {
    pub fn new(data_dir: &Path) -> Self {
        Kept {
            dir: data_dir.join("versions"),
        }
    }

    fn meta(&self, name: &str) -> Meta {
        std::fs::read(self.dir.join(name).join("kept.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_meta(&self, name: &str, meta: &Meta) -> Result<()> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = dir.join(".kept.json");
        std::fs::write(&tmp, serde_json::to_vec_pretty(meta)?)?;
        std::fs::rename(&tmp, dir.join("kept.json"))?;
        Ok(())
    }

    /// Keeps `files` as the version `version` of `name` that serves well.
    pub fn save(&self, name: &str, version: &str, spec: &PluginSpec, files: &Files) {
        let saved = (|| -> Result<()> {
            let mut meta = self.meta(name);
            if meta.version.as_deref() == Some(version) {
                return Ok(());
            }
            let dir = self.dir.join(name);
            std::fs::create_dir_all(&dir)?;
            let write = |file: &str, bytes: &[u8]| -> Result<()> {
                let tmp = dir.join(format!(".{file}"));
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, dir.join(file))?;
                Ok(())
            };
            write("component.wasm", &files.component)?;
            match &files.manifest {
                Some(text) => write("manifest.toml", text)?,
                None => {
                    let _ = std::fs::remove_file(dir.join("manifest.toml"));
                }
            }
            meta.version = Some(version.to_string());
            meta.component = Some(spec.component.clone());
            meta.manifest = spec.manifest.clone();
            self.write_meta(name, &meta)
        })();
        if let Err(e) = saved {
            tracing::warn!(
                plugin = name,
                "cannot keep the serving version for a rollback after a restart: {e:#}"
            );
        }
    }

    /// `version` of `name` was rolled back: refused, after a restart too.
    pub fn refuse(&self, name: &str, version: &str) {
        let mut meta = self.meta(name);
        if !meta.refused.iter().any(|v| v == version) {
            meta.refused.push(version.to_string());
        }
        if let Err(e) = self.write_meta(name, &meta) {
            tracing::warn!(plugin = name, "cannot keep the rollback: {e:#}");
        }
    }

    pub fn refused(&self, name: &str, version: &str) -> bool {
        self.meta(name).refused.iter().any(|v| v == version)
    }

    /// The kept version of `name`: its spec (its manifest parsed as it was
    /// written), its files and its id.
    pub fn load(&self, name: &str, host: &HostConfig) -> Option<(PluginSpec, Files, String)> {
        let meta = self.meta(name);
        let (version, component) = (meta.version?, meta.component?);
        let dir = self.dir.join(name);
        let bytes = std::fs::read(dir.join("component.wasm")).ok()?;
        let text = match &meta.manifest {
            Some(_) => Some(std::fs::read(dir.join("manifest.toml")).ok()?),
            None => None,
        };
        let parsed = manifest_from_text(
            name,
            &component,
            meta.manifest.as_deref(),
            text.as_deref()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .as_deref(),
            &host.limits,
        );
        match parsed {
            Ok(spec) => Some((
                spec,
                Files {
                    component: bytes,
                    manifest: text,
                },
                version,
            )),
            Err(e) => {
                tracing::warn!(plugin = name, "the kept version cannot be read: {e:#}");
                None
            }
        }
    }
}
