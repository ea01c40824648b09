//! Where backbones come from: a local directory (`config.json` + `model.safetensors`,
//! Hugging Face or timm/Microsoft names) or a built-in seeded random Swin.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde_json::Value;
use vmt_registry::bundle::{RawTensor, SwinGeometry};
use vmt_registry::Digest;

use super::error::{ModelError, Result};
use super::hub::{fetch, HubEnv, HubRef};
use super::swin::{self, Swin};
use super::tensors::{to_raw, NamedTensors};

/// The built-in random backbones: name, geometry and seed.
pub const RANDOM_BACKBONES: &[&str] = &["random:tiny", "random:swin-t"];

/// Where a backbone comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackboneSource {
    /// A directory with `config.json` and `model.safetensors` (or `pytorch_model.bin`).
    Dir(PathBuf),
    /// A Hugging Face Hub repository at a revision (a branch, tag or commit).
    Hub {
        /// `owner/name`.
        repo: String,
        /// A branch, tag or commit.
        revision: String,
    },
    /// A built-in seeded random Swin: `tiny` or `swin-t`.
    Random(String),
}

impl BackboneSource {
    /// Parses what `--backbone` takes: `random:NAME`, an existing directory, or
    /// `owner/name[@revision]` (optionally `hf:`-prefixed).
    ///
    /// ```
    /// use vmt_hub::model::BackboneSource;
    /// assert_eq!(
    ///     BackboneSource::parse("microsoft/swin-tiny-patch4-window7-224@main").unwrap(),
    ///     BackboneSource::Hub {
    ///         repo: "microsoft/swin-tiny-patch4-window7-224".into(),
    ///         revision: "main".into()
    ///     }
    /// );
    /// assert_eq!(BackboneSource::parse("random:tiny").unwrap(), BackboneSource::Random("tiny".into()));
    /// ```
    ///
    /// # Errors
    /// [`ModelError::BadInput`] when it is none of these.
    pub fn parse(spec: &str) -> Result<Self> {
        if let Some(name) = spec.strip_prefix("random:") {
            return Ok(Self::Random(name.into()));
        }
        let dir = Path::new(spec.strip_prefix("dir:").unwrap_or(spec));
        if dir.is_dir() {
            return Ok(Self::Dir(dir.into()));
        }
        if let Some(r) = HubRef::parse(spec) {
            return Ok(Self::Hub {
                repo: r.repo,
                revision: r.revision,
            });
        }
        Err(ModelError::bad_input(
            format!("backbone {spec:?}"),
            format!(
                "not a directory with config.json and model.safetensors, a Hugging Face repo id (owner/name[@revision]), nor one of {}",
                RANDOM_BACKBONES.join(", ")
            ),
        ))
    }

    /// The backbone a bundle records (its `source`, and for the Hub the commit it was
    /// resolved to), if it names one.
    pub fn recorded(g: &SwinGeometry) -> Option<Self> {
        let source = g.source.as_deref()?;
        if let Some(name) = source.strip_prefix("random:") {
            return Some(Self::Random(name.into()));
        }
        if let Some(repo) = source.strip_prefix("hf:") {
            return Some(Self::Hub {
                repo: repo.into(),
                revision: g.revision.clone().unwrap_or_else(|| "main".into()),
            });
        }
        source.strip_prefix("dir:").map(|d| Self::Dir(d.into()))
    }
}

impl std::fmt::Display for BackboneSource {
    /// The form [`BackboneSource::parse`] reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(d) => write!(f, "{}", d.display()),
            Self::Hub { repo, revision } => write!(f, "{repo}@{revision}"),
            Self::Random(name) => write!(f, "random:{name}"),
        }
    }
}

/// A loaded backbone and where it came from.
#[derive(Debug, Clone)]
pub struct Backbone {
    /// The network.
    pub swin: Arc<Swin>,
    /// `dir:<path>`, `hf:<repo>` or `random:<name>`.
    pub source: String,
    /// The commit a Hub revision resolved to.
    pub revision: Option<String>,
    /// `sha256:<hex>` of the weights file (of canonical bytes for random weights).
    pub digest: String,
}

impl Backbone {
    /// Loads `spec`: `random:tiny`, `random:swin-t` or a directory.
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        Self::open(&BackboneSource::parse(spec)?, device)
    }

    /// Loads the backbone `source` names.
    ///
    /// # Errors
    /// A directory without a Swin `config.json` and weights, a Hub repository that cannot
    /// be fetched (or is not cached with `HF_HUB_OFFLINE=1`), an unknown random backbone.
    pub fn open(source: &BackboneSource, device: &Device) -> Result<Self> {
        match source {
            BackboneSource::Random(name) => random_backbone(&format!("random:{name}"), device),
            BackboneSource::Dir(dir) => load_dir(dir, device),
            BackboneSource::Hub { repo, revision } => load_hub(
                &HubEnv::from_env(),
                &HubRef {
                    repo: repo.clone(),
                    revision: revision.clone(),
                },
                device,
            ),
        }
    }

    /// Whether it is a built-in random backbone.
    pub fn is_random(&self) -> bool {
        self.source.starts_with("random:")
    }

    /// The geometry with this backbone's provenance, as recorded in bundles.
    pub fn geometry_with_provenance(&self) -> SwinGeometry {
        let mut g = self.swin.geometry.clone();
        g.source = Some(self.source.clone());
        g.revision = self.revision.clone();
        g.digest = Some(self.digest.clone());
        g
    }

    /// Refuses a backbone whose weights differ from those a bundle was trained on.
    pub fn check_matches(&self, recorded: &SwinGeometry) -> Result<()> {
        if let Some(want) = &recorded.digest {
            if want != &self.digest {
                return Err(ModelError::BackboneMismatch(format!(
                    "the bundle was trained on backbone {} with weights {want}, but {} has weights {}",
                    recorded.source.as_deref().unwrap_or("<unknown>"),
                    self.source,
                    self.digest
                )));
            }
        }
        Ok(())
    }

    /// Parameters of the backbone (no classifier, no index buffers).
    pub fn parameter_count(&self) -> usize {
        swin::parameter_count(&self.swin.geometry)
    }
}

/// Reads a local directory with `config.json` and `model.safetensors` (or
/// `pytorch_model.bin`).
pub fn load_dir(dir: &Path, device: &Device) -> Result<Backbone> {
    let weights_path = ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            ModelError::bad_input(
                dir.join("model.safetensors").display().to_string(),
                "missing: a backbone directory needs model.safetensors (or pytorch_model.bin)",
            )
        })?;
    let digest = Digest::of_file(&weights_path)
        .map_err(|e| ModelError::bad_input(weights_path.display().to_string(), e.to_string()))?;
    let source = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let swin = load_swin(&dir.join("config.json"), &weights_path, device)?;
    Ok(Backbone {
        swin: Arc::new(swin),
        source: format!("dir:{}", source.display()),
        revision: None,
        digest: digest.to_string(),
    })
}

/// Fetches (or finds in the cache) a Hub backbone and loads it.
pub fn load_hub(env: &HubEnv, r: &HubRef, device: &Device) -> Result<Backbone> {
    let hub = fetch(env, r)?;
    let swin = load_swin(&hub.snapshot.join("config.json"), &hub.weights, device)?;
    Ok(Backbone {
        swin: Arc::new(swin),
        source: format!("hf:{}", hub.repo),
        revision: Some(hub.commit),
        digest: hub.digest,
    })
}

/// A Swin from a config file and a weights file (safetensors, or a PyTorch pickle).
fn load_swin(config: &Path, weights_path: &Path, device: &Device) -> Result<Swin> {
    let geometry = read_config(config)?;
    let raw = if weights_path.extension().is_some_and(|e| e == "bin") {
        let tensors = candle_core::pickle::read_all(weights_path).map_err(|e| {
            ModelError::NotSafetensors {
                path: weights_path.into(),
                reason: format!("not a readable PyTorch checkpoint either: {e}"),
            }
        })?;
        NamedTensors::new(
            weights_path.display().to_string(),
            tensors
                .into_iter()
                .map(|(n, t)| (n, t.to_device(device).unwrap_or(t)))
                .collect(),
        )
    } else {
        NamedTensors::load(weights_path, device)?
    };
    Swin::new(&canonical_names(raw)?, &geometry, device)
}

/// Parses a Hugging Face `SwinConfig` (or a timm config naming a Swin architecture).
pub fn read_config(path: &Path) -> Result<SwinGeometry> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| ModelError::Json {
        path: path.into(),
        source: e,
    })?;
    parse_config(&v, path)
}

fn parse_config(v: &Value, path: &Path) -> Result<SwinGeometry> {
    let not_swin = |reason: String| ModelError::NotSwin {
        path: PathBuf::from(path),
        reason,
    };
    if let Some(arch) = v.get("architecture").and_then(Value::as_str) {
        return timm_geometry(arch)
            .ok_or_else(|| not_swin(format!("timm architecture {arch:?} is not a known Swin")));
    }
    match v.get("model_type").and_then(Value::as_str) {
        Some("swin") => {}
        Some(other) => {
            return Err(not_swin(format!(
                "model_type is {other:?}, expected \"swin\""
            )))
        }
        None => return Err(not_swin("no model_type (expected \"swin\")".into())),
    }
    let usize_field = |name: &str, default: Option<usize>| -> Result<usize> {
        match v.get(name) {
            Some(x) => x
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| not_swin(format!("{name} is not a non-negative integer"))),
            None => default.ok_or_else(|| not_swin(format!("{name} is missing"))),
        }
    };
    let list = |name: &str| -> Result<Vec<usize>> {
        v.get(name)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
            .ok_or_else(|| not_swin(format!("{name} is missing or not a list of integers")))
    };
    if usize_field("num_channels", Some(3))? != 3 {
        return Err(not_swin("num_channels must be 3".into()));
    }
    if v.get("use_absolute_embeddings").and_then(Value::as_bool) == Some(true) {
        return Err(not_swin(
            "use_absolute_embeddings = true is not supported".into(),
        ));
    }
    if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
        if act != "gelu" {
            return Err(not_swin(format!(
                "hidden_act {act:?} is not supported (only \"gelu\")"
            )));
        }
    }
    let mut g = SwinGeometry::new(
        usize_field("embed_dim", None)?,
        &list("depths")?,
        &list("num_heads")?,
        usize_field("window_size", None)?,
    );
    g.patch_size = usize_field("patch_size", Some(4))?;
    g.mlp_ratio = v.get("mlp_ratio").and_then(Value::as_f64).unwrap_or(4.0);
    g.layer_norm_eps = v
        .get("layer_norm_eps")
        .and_then(Value::as_f64)
        .unwrap_or(1e-5);
    if g.depths.len() != g.num_heads.len() || g.depths.is_empty() {
        return Err(not_swin(
            "depths and num_heads must be non-empty and of equal length".into(),
        ));
    }
    Ok(g)
}

/// Geometry of timm's `swin_{tiny,small,base,large}_patch4_window{7,12}_*` names.
fn timm_geometry(arch: &str) -> Option<SwinGeometry> {
    let rest = arch.strip_prefix("swin_")?;
    let (size, rest) = rest.split_once("_patch")?;
    let (patch, rest) = rest.split_once("_window")?;
    let window: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let (embed, depths, heads): (usize, &[usize], &[usize]) = match size {
        "tiny" => (96, &[2, 2, 6, 2], &[3, 6, 12, 24]),
        "small" => (96, &[2, 2, 18, 2], &[3, 6, 12, 24]),
        "base" => (128, &[2, 2, 18, 2], &[4, 8, 16, 32]),
        "large" => (192, &[2, 2, 18, 2], &[6, 12, 24, 48]),
        _ => return None,
    };
    let mut g = SwinGeometry::new(embed, depths, heads, window.parse().ok()?);
    g.patch_size = patch.parse().ok()?;
    Some(g)
}

/// Maps a checkpoint's names onto the Hugging Face names without the `swin.` prefix.
///
/// Hugging Face (`swin.` prefix or none): `classifier.*` and `relative_position_index`
/// dropped. timm/Microsoft: fused `qkv` split, `layers.N.downsample` moved to the end of
/// its stage whether the checkpoint keeps it at the end (Microsoft) or at the start of
/// the next stage (timm >= 0.9); `head.*`, `attn_mask` and index buffers dropped.
pub fn canonical_names(raw: NamedTensors) -> Result<NamedTensors> {
    let origin = raw.origin.clone();
    let is_timm = raw.tensors.keys().any(|k| k.starts_with("patch_embed."));
    let mut out = HashMap::new();
    if !is_timm {
        for (name, t) in raw.tensors {
            let name = name
                .strip_prefix("swin.")
                .map(str::to_string)
                .unwrap_or(name);
            if name.starts_with("classifier.")
                || name.ends_with("relative_position_index")
                || name.starts_with("pooler.")
            {
                continue;
            }
            out.insert(name, t);
        }
        return Ok(NamedTensors::new(origin, out));
    }
    let downsample_at_end = raw
        .tensors
        .keys()
        .any(|k| k.starts_with("layers.0.downsample."));
    for (name, t) in raw.tensors {
        if name.starts_with("head")
            || name.ends_with("attn_mask")
            || name.ends_with("relative_position_index")
        {
            continue;
        }
        let mapped = if let Some(rest) = name.strip_prefix("patch_embed.proj.") {
            format!("embeddings.patch_embeddings.projection.{rest}")
        } else if let Some(rest) = name.strip_prefix("patch_embed.norm.") {
            format!("embeddings.norm.{rest}")
        } else if let Some(rest) = name.strip_prefix("norm.") {
            format!("layernorm.{rest}")
        } else if let Some(rest) = name.strip_prefix("layers.") {
            let bad = |reason: &str| ModelError::UnexpectedTensor {
                file: origin.clone(),
                name: name.clone(),
                reason: reason.into(),
            };
            let (stage, rest) = rest.split_once('.').unwrap_or((rest, ""));
            let stage: usize = stage
                .parse()
                .map_err(|_| bad("layers.<N> with N not a number"))?;
            if let Some(d) = rest.strip_prefix("downsample.") {
                let at = match downsample_at_end {
                    true => stage,
                    false => stage
                        .checked_sub(1)
                        .ok_or_else(|| bad("a downsample before the first stage"))?,
                };
                format!("encoder.layers.{at}.downsample.{d}")
            } else if let Some(rest) = rest.strip_prefix("blocks.") {
                let (block, part) = rest.split_once('.').unwrap_or((rest, ""));
                let p = format!("encoder.layers.{stage}.blocks.{block}");
                if let Some(kind) = part.strip_prefix("attn.qkv.") {
                    split_qkv(&mut out, &p, kind, &t)?;
                    continue;
                }
                format!("{p}.{}", timm_block_part(part))
            } else {
                format!("encoder.layers.{stage}.{rest}")
            }
        } else {
            name.clone()
        };
        out.insert(mapped, t);
    }
    Ok(NamedTensors::new(origin, out))
}

/// timm's fused `qkv` of block `p` as Hugging Face's `query`, `key` and `value`.
fn split_qkv(out: &mut HashMap<String, Tensor>, p: &str, kind: &str, t: &Tensor) -> Result<()> {
    let c = t.dim(0)? / 3;
    for (i, n) in ["query", "key", "value"].iter().enumerate() {
        out.insert(
            format!("{p}.attention.self.{n}.{kind}"),
            t.narrow(0, i * c, c)?,
        );
    }
    Ok(())
}

/// A timm block's tensor name (after `blocks.N.`) in Hugging Face's naming.
fn timm_block_part(part: &str) -> String {
    part.replace("norm1.", "layernorm_before.")
        .replace("norm2.", "layernorm_after.")
        .replace("attn.proj.", "attention.output.dense.")
        .replace(
            "attn.relative_position_bias_table",
            "attention.self.relative_position_bias_table",
        )
        .replace("mlp.fc1.", "intermediate.dense.")
        .replace("mlp.fc2.", "output.dense.")
}

/// Builds seeded random weights in checkpoint order: every `randn` draws from one
/// generator, so the same seed gives the same weights everywhere.
struct RandomInit {
    rng: rand_chacha::ChaCha8Rng,
    normal: Normal<f32>,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl RandomInit {
    /// N(0, 0.02) values.
    fn randn(&mut self, name: String, shape: Vec<usize>) {
        let n: usize = shape.iter().product();
        let values = (0..n).map(|_| self.normal.sample(&mut self.rng)).collect();
        self.tensors.insert(name, (shape, values));
    }

    /// A constant vector of `n`.
    fn fill(&mut self, name: String, n: usize, value: f32) {
        self.tensors.insert(name, (vec![n], vec![value; n]));
    }

    /// `{name}.weight` `[out, inp]` random, `{name}.bias` zero.
    fn linear(&mut self, name: &str, out: usize, inp: usize) {
        self.randn(format!("{name}.weight"), vec![out, inp]);
        self.fill(format!("{name}.bias"), out, 0.0);
    }

    /// A LayerNorm of `c` channels: weight one, bias zero.
    fn norm(&mut self, name: &str, c: usize) {
        self.fill(format!("{name}.weight"), c, 1.0);
        self.fill(format!("{name}.bias"), c, 0.0);
    }

    /// One Swin block of `c` channels and `heads` heads.
    fn block(&mut self, b: &str, g: &SwinGeometry, c: usize, heads: usize) {
        self.norm(&format!("{b}.layernorm_before"), c);
        self.norm(&format!("{b}.layernorm_after"), c);
        for n in ["query", "key", "value"] {
            self.linear(&format!("{b}.attention.self.{n}"), c, c);
        }
        let span = (2 * g.window_size - 1).pow(2);
        let table = format!("{b}.attention.self.relative_position_bias_table");
        self.randn(table, vec![span, heads]);
        self.linear(&format!("{b}.attention.output.dense"), c, c);
        let hidden = g.mlp_hidden(c);
        self.linear(&format!("{b}.intermediate.dense"), hidden, c);
        self.linear(&format!("{b}.output.dense"), c, hidden);
    }
}

/// Seeded random weights in a built-in geometry: same name, same weights, everywhere.
pub fn random_weights(geometry: &SwinGeometry, seed: u64, device: &Device) -> Result<NamedTensors> {
    let mut init = RandomInit {
        rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        normal: Normal::new(0f32, 0.02).expect("valid normal"),
        tensors: BTreeMap::new(),
    };
    let g = geometry;
    let (c0, p) = (g.embed_dim, g.patch_size);
    let patch = "embeddings.patch_embeddings.projection";
    init.randn(format!("{patch}.weight"), vec![c0, 3, p, p]);
    init.fill(format!("{patch}.bias"), c0, 0.0);
    init.norm("embeddings.norm", c0);
    let dims = g.stage_dims();
    for (i, (&depth, &heads)) in g.depths.iter().zip(&g.num_heads).enumerate() {
        let c = dims[i];
        for j in 0..depth {
            init.block(&format!("encoder.layers.{i}.blocks.{j}"), g, c, heads);
        }
        if i + 1 < g.depths.len() {
            let d = format!("encoder.layers.{i}.downsample");
            init.norm(&format!("{d}.norm"), 4 * c);
            init.randn(format!("{d}.reduction.weight"), vec![2 * c, 4 * c]);
        }
    }
    init.norm("layernorm", *dims.last().expect("at least one stage"));
    let mut tensors = HashMap::new();
    for (name, (shape, values)) in init.tensors {
        tensors.insert(name, Tensor::from_vec(values, shape, device)?);
    }
    Ok(NamedTensors::new(format!("random seed {seed}"), tensors))
}

fn random_backbone(spec: &str, device: &Device) -> Result<Backbone> {
    let (geometry, seed) = match spec {
        "random:tiny" => (SwinGeometry::tiny(), 0x7469_6e79),
        "random:swin-t" => (SwinGeometry::swin_t(), 0x7377_696e),
        _ => {
            return Err(ModelError::bad_input(
                format!("backbone {spec:?}"),
                format!(
                    "unknown random backbone (built in: {})",
                    RANDOM_BACKBONES.join(", ")
                ),
            ))
        }
    };
    let weights = random_weights(&geometry, seed, device)?;
    let swin = Swin::new(&weights, &geometry, device)?;
    Ok(Backbone {
        swin: Arc::new(swin),
        source: spec.to_string(),
        revision: None,
        digest: weights_digest(&weights)?.to_string(),
    })
}

/// Digest of canonical safetensors bytes of a weight map (names sorted, no metadata drift).
pub fn weights_digest(w: &NamedTensors) -> Result<Digest> {
    let mut raw: BTreeMap<String, RawTensor> = BTreeMap::new();
    for (name, t) in &w.tensors {
        raw.insert(name.clone(), to_raw(&t.to_dtype(DType::F32)?)?);
    }
    Ok(Digest::of(
        &vmt_registry::safetensors_canon::canonical_bytes(&raw),
    ))
}
