//! Opening a stored VMT-Adapter: a bundle from a registry or a directory, on the
//! backbone it records (or one you name), ready to run.
//!
//! ```no_run
//! use vmt_hub::adapter::{Adapter, BundleSource};
//! use vmt_hub::registry::store::default_root;
//!
//! let source = BundleSource::parse(&default_root(), "pascal/vmt:v1");
//! let adapter = Adapter::open(&source, None, &candle_core::Device::Cpu)?;
//! let files = adapter.predict_image("street.jpg".as_ref(), "predictions".as_ref())?;
//! println!("{} pictures; tasks {:?}", files.len(), adapter.task_names());
//! # Ok::<(), vmt_hub::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use vmt_registry::bundle::BundleDir;
use vmt_registry::{Digest, Registry};

use crate::error::{Context, Result};
use crate::model::tensors::from_raw;
use crate::model::{Backbone, BackboneSource, VmtModel, VmtOutput};

/// Where a bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleSource {
    /// A reference (`name:tag`, digest or prefix) in the registry at `root`.
    Registry {
        /// The registry's folder.
        root: PathBuf,
        /// The reference.
        reference: String,
    },
    /// An exported directory (`bundle.json` + `adapter.safetensors`).
    Dir(PathBuf),
}

impl BundleSource {
    /// An existing directory, else a reference into the registry at `root`.
    pub fn parse(root: &Path, s: &str) -> Self {
        if Path::new(s).is_dir() {
            Self::Dir(s.into())
        } else {
            Self::Registry {
                root: root.into(),
                reference: s.into(),
            }
        }
    }
}

impl std::fmt::Display for BundleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Registry { reference, .. } => f.write_str(reference),
            Self::Dir(d) => write!(f, "{}", d.display()),
        }
    }
}

/// A bundle read and checked, with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedBundle {
    /// The bundle.
    pub bundle: BundleDir,
    /// A name for messages: the file or `reference (digest)`.
    pub origin: String,
    /// The manifest digest, for a bundle from a registry.
    pub digest: Option<Digest>,
}

impl LoadedBundle {
    /// Keeps only the tasks named in `tasks` (their decoders and modules; the shared
    /// adapter stays): a bundle that runs fewer tasks.
    pub fn keep_tasks(&mut self, tasks: &[String]) {
        let bundle = &mut self.bundle;
        bundle.config.tasks.retain(|t| tasks.contains(&t.name));
        let keep = vmt_registry::bundle::bundle_tensors(&bundle.config);
        bundle
            .tensors
            .retain(|n, _| keep.iter().any(|s| &s.name == n));
    }
}

/// Reads a bundle (every blob verified, every tensor checked against the config).
///
/// # Errors
/// An unknown reference, a registry another process holds, a bundle that does not
/// validate (named by file or digest).
pub fn read_bundle(source: &BundleSource) -> Result<LoadedBundle> {
    match source {
        BundleSource::Dir(dir) => Ok(LoadedBundle {
            bundle: BundleDir::read(dir)?,
            origin: dir.join("adapter.safetensors").display().to_string(),
            digest: None,
        }),
        BundleSource::Registry { root, reference } => {
            let reg = Registry::open_existing(root)?;
            let d = reg.resolve(reference)?;
            Ok(LoadedBundle {
                bundle: reg.load(&d)?,
                origin: format!("{reference} ({d})"),
                digest: Some(d),
            })
        }
    }
}

/// The backbone to run `bundle` on: `given`, else the one it records.
///
/// # Errors
/// When neither names one.
pub fn backbone_for(
    bundle: &LoadedBundle,
    given: Option<&BackboneSource>,
) -> Result<BackboneSource> {
    given
        .cloned()
        .or_else(|| BackboneSource::recorded(&bundle.bundle.config.backbone))
        .with_context(|| {
            format!(
                "{}: the bundle records no usable backbone source; name one",
                bundle.origin
            )
        })
}

/// Builds the model of a bundle on a backbone, refusing a backbone whose weights differ
/// from the ones the bundle records.
///
/// # Errors
/// A backbone of other weights or geometry.
pub fn build_model(bundle: &LoadedBundle, backbone: &Backbone) -> Result<VmtModel> {
    backbone.check_matches(&bundle.bundle.config.backbone)?;
    let tensors = from_raw(
        &bundle.bundle.tensors,
        &bundle.origin,
        &backbone.swin.device,
    )?;
    Ok(VmtModel::new(
        bundle.bundle.config.clone(),
        Arc::clone(&backbone.swin),
        &tensors,
    )?)
}

/// A bundle with its backbone and model: what `forward`, `predict` and `eval` run.
pub struct Adapter {
    /// The bundle and where it came from.
    pub loaded: LoadedBundle,
    /// Its backbone.
    pub backbone: Backbone,
    /// The model built from both.
    pub model: VmtModel,
}

impl Adapter {
    /// Opens a bundle on its recorded backbone (or `backbone`), on `device`.
    ///
    /// # Errors
    /// See [`read_bundle`], [`backbone_for`], [`Backbone::open`] and [`build_model`].
    pub fn open(
        source: &BundleSource,
        backbone: Option<&BackboneSource>,
        device: &Device,
    ) -> Result<Self> {
        Self::from_loaded(read_bundle(source)?, backbone, device)
    }

    /// Like [`Adapter::open`] for a bundle already read.
    ///
    /// # Errors
    /// See [`Adapter::open`].
    pub fn from_loaded(
        loaded: LoadedBundle,
        backbone: Option<&BackboneSource>,
        device: &Device,
    ) -> Result<Self> {
        let spec = backbone_for(&loaded, backbone)?;
        let backbone =
            Backbone::open(&spec, device).with_context(|| format!("loading backbone {spec}"))?;
        Self::with_backbone(loaded, backbone)
    }

    /// Like [`Adapter::from_loaded`] on a backbone already loaded (checked against the
    /// one the bundle records).
    ///
    /// # Errors
    /// See [`build_model`].
    pub fn with_backbone(loaded: LoadedBundle, backbone: Backbone) -> Result<Self> {
        let model = build_model(&loaded, &backbone)?;
        Ok(Self {
            loaded,
            backbone,
            model,
        })
    }

    /// Its task names, in config order.
    pub fn task_names(&self) -> Vec<&str> {
        self.model
            .config
            .tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect()
    }

    /// Runs every task on normalised `pixel_values` `[B, 3, H, W]`.
    ///
    /// # Errors
    /// A tensor of another shape or dtype.
    pub fn forward(&self, pixels: &Tensor) -> Result<VmtOutput> {
        Ok(self.model.forward(pixels)?)
    }

    /// Predicts every task on an image file; writes one PNG per task and a sheet.
    ///
    /// # Errors
    /// An image that cannot be decoded (named), an output folder that cannot be written.
    pub fn predict_image(&self, image: &Path, out_dir: &Path) -> Result<Vec<PathBuf>> {
        crate::predict::predict_image(&self.model, image, out_dir)
    }
}
