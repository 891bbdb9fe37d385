//! Shadows in the plugins folder: `<name>.shadow.wasm` runs beside the
//! serving version of `<name>` (see [`crate::shadow`]) while the file is
//! there; `plugboard ctl promote` moves its files into the serving
//! version's place, and the reload that follows swaps it in.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::{Fingerprint, Reloader, fingerprint};
use crate::config::{PluginSpec, scan_shadows};
use crate::shadow::{Shadow, Tap};

/// A scratch copy of a folder larger than this starts empty instead.
const MAX_SCRATCH_COPY: u64 = 256 << 20;

/// A shadow running beside a plugin.
pub struct Attached {
    fingerprint: Fingerprint,
    shadow: Arc<Shadow>,
}

impl Reloader {
    /// Starts, replaces or ends shadows to match the folder.
    pub(super) fn reconcile_shadows(&mut self) {
        let specs = match scan_shadows(&self.config) {
            Ok(specs) => specs,
            Err(e) => {
                tracing::error!("cannot look for shadows: {e:#}");
                return;
            }
        };
        let ended: Vec<String> = self
            .shadows
            .keys()
            .filter(|name| !specs.contains_key(*name) || !self.running.contains_key(*name))
            .cloned()
            .collect();
        for name in ended {
            self.end_shadow(&name);
        }
        self.failed_shadows
            .retain(|name, _| specs.contains_key(name));
        for (name, spec) in specs {
            let Some(serving) = self.running.get(&name).map(|r| r.live.clone()) else {
                continue;
            };
            let attempt = spec.and_then(|spec| {
                let (fingerprint, files) = fingerprint(&spec)?;
                Ok((spec, fingerprint, files.component))
            });
            let (spec, fingerprint, bytes) = match attempt {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(plugin = name, "the shadow cannot run: {e:#}");
                    continue;
                }
            };
            if self.shadows.get(&name).map(|a| &a.fingerprint) == Some(&fingerprint)
                || self.failed_shadows.get(&name) == Some(&fingerprint)
            {
                continue;
            }
            match self.load_shadow(&name, spec, &bytes, &fingerprint, &serving.current().spec) {
                Ok(shadow) => {
                    tracing::info!(
                        plugin = name,
                        shadow = shadow.prepared.version,
                        serving = serving.current().version,
                        "a shadow runs beside the serving version: its requests are answered here, never sent (plugboard ctl shadow {name})"
                    );
                    serving.set_shadow(Some(shadow.clone()));
                    self.failed_shadows.remove(&name);
                    self.shadows.insert(
                        name,
                        Attached {
                            fingerprint,
                            shadow,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(plugin = name, "the shadow cannot run: {e:#}");
                    self.failed_shadows.insert(name, fingerprint);
                }
            }
        }
    }

    /// Compiles the shadow and checks that it starts. It gets at most what
    /// the serving version has: a scratch copy of the serving version's
    /// folder (an empty one if that has none), and the smaller of the two
    /// memory and time budgets. Its requests are never sent.
    fn load_shadow(
        &self,
        name: &str,
        mut spec: PluginSpec,
        bytes: &[u8],
        fingerprint: &Fingerprint,
        serving: &PluginSpec,
    ) -> Result<Arc<Shadow>> {
        let mut folders = None;
        if let Some(folder) = spec.folder.as_mut() {
            let scratch = self.config.data_dir.join("shadow").join(name);
            match &serving.folder {
                Some(served) => {
                    scratch_copy(&served.host_path, &scratch)?;
                    folders = Some((served.host_path.clone(), scratch.clone()));
                }
                None => scratch_copy(Path::new("/nonexistent"), &scratch)?,
            }
            folder.host_path = scratch;
        }
        let limits = &mut spec.limits;
        limits.memory_limit_bytes = limits
            .memory_limit_bytes
            .min(serving.limits.memory_limit_bytes);
        limits.timeout = limits.timeout.min(serving.limits.timeout);
        let mut prepared = self.runtime.prepare_bytes(spec, bytes)?;
        prepared.version = fingerprint.id();
        let tap = Arc::new(Tap::default());
        let prepared = prepared.into_shadow(tap.clone());
        prepared.instantiate(None)?;
        Ok(Arc::new(Shadow::new(
            name,
            Arc::new(prepared),
            tap,
            folders,
        )))
    }

    fn end_shadow(&mut self, name: &str) {
        if let Some(attached) = self.shadows.remove(name) {
            if let Some(running) = self.running.get(name) {
                running.live.set_shadow(None);
            }
            let counts = attached.shadow.counts();
            tracing::info!(
                plugin = name,
                shadow = attached.shadow.prepared.version,
                compared = counts.compared,
                agreed = counts.agreed,
                "the shadow ended"
            );
        }
    }

    /// Moves the files of each shadow an operator promoted into the
    /// serving version's place, and reloads.
    pub(super) fn promote_shadows(&mut self) {
        let promoted: Vec<(String, Arc<Shadow>)> = self
            .shadows
            .iter()
            .filter(|(name, a)| {
                self.control
                    .promoted(name, &a.shadow.prepared.version, a.shadow.since_ms)
            })
            .map(|(name, a)| (name.clone(), a.shadow.clone()))
            .collect();
        if promoted.is_empty() {
            return;
        }
        for (name, shadow) in promoted {
            let Some(serving) = self.running.get(&name).map(|r| r.live.current()) else {
                continue;
            };
            match promote_files(&self.config.plugins_dir, &name, &serving.spec.component) {
                Ok(()) => tracing::info!(
                    plugin = name,
                    version = shadow.prepared.version,
                    "the shadow is promoted: it takes the serving version's place"
                ),
                Err(e) => {
                    tracing::error!(plugin = name, "cannot promote the shadow: {e:#}");
                    // Not tried again until the shadow changes.
                    if let Some(a) = self.shadows.remove(&name) {
                        self.failed_shadows.insert(name.clone(), a.fingerprint);
                        if let Some(r) = self.running.get(&name) {
                            r.live.set_shadow(None);
                        }
                    }
                }
            }
        }
        if let Err(e) = self.reconcile() {
            tracing::error!("cannot rescan the plugins folder: {e:#}");
        }
    }
}

/// `<name>.shadow.wasm` becomes the serving component and
/// `<name>.shadow.toml`, if there is one, the manifest.
fn promote_files(dir: &Path, name: &str, component: &Path) -> Result<()> {
    let manifest = dir.join(format!("{name}.shadow.toml"));
    if manifest.exists() {
        let to = dir.join(format!("{name}.toml"));
        std::fs::rename(&manifest, &to)
            .with_context(|| format!("cannot move {} to {}", manifest.display(), to.display()))?;
    }
    let wasm = dir.join(format!("{name}.shadow.wasm"));
    std::fs::rename(&wasm, component)
        .with_context(|| format!("cannot move {} to {}", wasm.display(), component.display()))
}

/// Makes `scratch` a copy of `from` (empty if `from` holds more than
/// [`MAX_SCRATCH_COPY`]).
fn scratch_copy(from: &Path, scratch: &Path) -> Result<()> {
    if scratch.exists() {
        std::fs::remove_dir_all(scratch)
            .with_context(|| format!("cannot clear {}", scratch.display()))?;
    }
    std::fs::create_dir_all(scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let files = crate::shadow::diff::walk(from, usize::MAX);
    let size: u64 = files.iter().map(|(_, _, size)| size).sum();
    if size > MAX_SCRATCH_COPY {
        tracing::warn!(
            "{} holds {} MiB: the shadow's scratch folder starts empty",
            from.display(),
            size >> 20
        );
        return Ok(());
    }
    for (src, rel, _) in files {
        let dst = scratch.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&src, &dst)
            .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}
