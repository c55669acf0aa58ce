//! The projroute model file: one safetensors file, named f32 tensors plus a JSON
//! config under the `projroute` key of the safetensors `__metadata__`.
//! See `docs/format.md` for the tensors of each kind.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ndarray::{ArrayView1, ArrayView2, ArrayView3};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::answer_index::INDEX_FORMAT_NAME;
use crate::atomic_file::write_atomically;
use crate::error::{format_err, invalid, Error, Result};
use crate::precision::Precision;

/// The tensor stored at the config's `weights_dtype`; every other tensor is f32.
const WEIGHTS_TENSOR: &str = "W";

/// Whether a tensor holds maps, stored at the config's `weights_dtype`: `W`, or a
/// factor of factored maps (`W.base`, `W.U`, `W.M`).
fn is_weights(name: &str) -> bool {
    name == WEIGHTS_TENSOR || name.starts_with("W.")
}

/// Optional tensor (N, D_out) of answer embeddings stored with a model for search.
pub const INDEX_TENSOR: &str = "index.embeddings";

/// Largest safetensors header this reader accepts (the `safetensors` crate's limit).
const MAX_HEADER_SIZE: u64 = 100_000_000;

/// Newest format version this build reads. A file is written with the lowest version
/// that holds it: 2 for factored federated maps (`ranks`), else 1, so that older
/// readers still open every file they can serve.
pub const FORMAT_VERSION: u32 = 2;
/// `__metadata__` key holding the JSON config.
pub const CONFIG_KEY: &str = "projroute";
/// Value of the config's `format` field.
pub const FORMAT_NAME: &str = "projroute";

/// The JSON config of a model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Always `"projroute"`.
    pub format: String,
    /// Format version the file was written with.
    pub version: u32,
    /// Model kind: `global`, `federated`, `lda`, `tree`, `hierarchical`, `transformer`,
    /// `transformer_ensemble` or `prle`.
    pub kind: String,
    /// Dimension of the input (question) embeddings the kind's tensors take.
    pub dim_in: usize,
    /// Dimension of the output (answer-space) embeddings.
    pub dim_out: usize,
    /// Number of clusters / heads K (routed kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_clusters: Option<usize>,
    /// Softmax temperature (routed kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Most clusters per query (routed kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Optional coverage target (routed kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f32>,
    /// Per-question routing (`federated`): the routing tensor `questions` holds the
    /// training questions sorted by cluster, this many per cluster (sums to N).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_counts: Option<Vec<usize>>,
    /// Per-question routing: temperature of an optional second softmax over the
    /// summed cluster weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_temperature: Option<f32>,
    /// Factored federated maps, `W_k = W.base + U_k M_k`: the rank of each cluster's
    /// correction, its columns of `W.U` and rows of `W.M` in order (format version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<Vec<usize>>,
    /// Storage type of the maps (`W`, or `W.base`, `W.U` and `W.M`): `float32`
    /// (default), `float16` or `bfloat16`; products are computed in f32 either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_dtype: Option<String>,
    /// Keyed kinds (`tree`, `hierarchical`): the key of each map in `W`, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// Architecture of a distilled student (`transformer` kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformer: Option<TransformerConfig>,
    /// Mixture of students (`transformer_ensemble` kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleConfig>,
    /// Prototype regression with local experts (`prle` kind): head and router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prle: Option<PrleConfig>,
    /// A bridged model: queries of this dimension (another encoder's, e.g. a static
    /// model's) are first mapped by the tensors `bridge.W` (input_dim, dim_in) and
    /// optional `bridge.bias` (dim_in,), then served by the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_dim: Option<usize>,
    /// Free-form record of how the model was fitted; not read by the core.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fit: Map<String, Value>,
}

/// Architecture of a `transformer` student: L cross-attention blocks of width
/// `d_model` with `n_heads` heads over `num_keys` learned keys and values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Attention heads (divides `d_model`).
    pub n_heads: usize,
    /// Number of blocks.
    pub n_layers: usize,
    /// Learned keys/values per block.
    pub num_keys: usize,
    /// Hidden width of each block's feed-forward network.
    pub ffn_dim: usize,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
}

/// A `transformer_ensemble`: `n_domains` students (each of the `transformer`
/// architecture) mixed by a router MLP (`dim_in -> router_hidden -> n_domains`) over
/// its `top_k` best domains (`top_k = n_domains` mixes all).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleConfig {
    /// Number of domain students.
    pub n_domains: usize,
    /// Domains mixed per query.
    pub top_k: usize,
    /// Hidden width of the router MLP.
    pub router_hidden: usize,
}

/// A `prle` model: the kind of its projection head and of its router over the
/// prototypes (see `docs/format.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrleConfig {
    /// `linear`, `mlp`, `residual_mlp` or `rff`.
    pub head: String,
    /// `knn`, `radius`, `softmax` or `mlp`.
    pub router: String,
    /// Radius in value space (`radius` router): prototypes within it share the weight.
    pub radius: f32,
}

impl Config {
    /// Parse and check a config JSON string (format name and version first, so that a
    /// newer file is reported as such rather than as a schema mismatch).
    pub fn from_json(text: &str) -> Result<Self> {
        let value = versioned_json(text, "config", FORMAT_NAME, FORMAT_VERSION)?;
        let config: Config = serde_json::from_value(value).or_else(|e| format_err(format!("bad config: {e}")))?;
        if config.ranks.is_some() && config.version < 2 {
            return format_err("`ranks` (factored maps) needs format version 2");
        }
        if let Some(name) = &config.weights_dtype {
            if Precision::from_name(name).is_none() {
                return format_err(format!("`weights_dtype` must be float32, float16 or bfloat16, got {name:?}"));
            }
        }
        Ok(config)
    }

    /// Storage precision of the maps `W` (`weights_dtype`, float32 when absent).
    pub fn weights_precision(&self) -> Precision {
        self.weights_dtype.as_deref().and_then(Precision::from_name).unwrap_or(Precision::F32)
    }

    /// The config as a JSON string.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Config always serialises")
    }
}

/// One f32 tensor, owned, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from a shape and matching row-major data.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        if shape.iter().product::<usize>() != data.len() {
            return invalid(format!("shape {shape:?} does not match {} values", data.len()));
        }
        Ok(Tensor { shape, data })
    }

    /// A copy of an array of any rank and layout, row-major.
    pub fn from_array<D: ndarray::Dimension>(a: ndarray::ArrayView<'_, f32, D>) -> Self {
        let data = match a.as_slice() {
            Some(s) => s.to_vec(),
            None => a.iter().copied().collect(),
        };
        Tensor { shape: a.shape().to_vec(), data }
    }

    fn view<D: ndarray::Dimension>(&self, name: &str, dim: D) -> Result<ndarray::ArrayView<'_, f32, D>> {
        if self.shape.len() != dim.ndim() {
            return format_err(format!(
                "tensor `{name}` has {} dimensions {:?}, expected {}",
                self.shape.len(),
                self.shape,
                dim.ndim()
            ));
        }
        ndarray::ArrayView::from_shape(dim, &self.data).or_else(|e| format_err(format!("tensor `{name}`: {e}")))
    }

    /// As a 1-D view; `name` is used in the error.
    pub fn view1(&self, name: &str) -> Result<ArrayView1<'_, f32>> {
        self.view(name, ndarray::Ix1(*self.shape.first().unwrap_or(&0)))
    }

    /// As a 2-D view; `name` is used in the error.
    pub fn view2(&self, name: &str) -> Result<ArrayView2<'_, f32>> {
        let s = &self.shape;
        self.view(name, ndarray::Ix2(s.first().copied().unwrap_or(0), s.get(1).copied().unwrap_or(0)))
    }

    /// As a 3-D view; `name` is used in the error.
    pub fn view3(&self, name: &str) -> Result<ArrayView3<'_, f32>> {
        let s = &self.shape;
        let at = |i: usize| s.get(i).copied().unwrap_or(0);
        self.view(name, ndarray::Ix3(at(0), at(1), at(2)))
    }
}

/// A model file in memory: config, tensors, and any other metadata strings.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFile {
    /// The parsed config.
    pub config: Config,
    /// Tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// Other `__metadata__` entries (for example answer texts), kept as they are.
    pub metadata: BTreeMap<String, String>,
}

impl ModelFile {
    /// Read a model file into memory (its tensors are copied out and packed when a
    /// projector is built, so the file is read, not mapped: a model in use survives its
    /// file being truncated, rewritten or replaced). Checks the config, dtypes
    /// and finiteness; the kind-specific shapes are checked when a projector is built
    /// from it. Errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| named(path, e.into()))?;
        Self::from_bytes(&bytes).map_err(|e| named(path, e))
    }

    /// A model file from its parts, as a writer hands them over: the config JSON string
    /// (checked as [`Config::from_json`] does), the tensors and other metadata strings.
    /// `W` is rounded to the config's `weights_dtype` and every tensor is checked for
    /// finiteness, so the result equals what [`from_bytes`](Self::from_bytes) gives for
    /// the file that [`to_bytes`](Self::to_bytes) writes of it. A metadata entry under
    /// [`CONFIG_KEY`] is dropped (the config takes that key).
    pub fn from_parts(
        config_json: &str,
        mut tensors: BTreeMap<String, Tensor>,
        mut metadata: BTreeMap<String, String>,
    ) -> Result<Self> {
        let config = Config::from_json(config_json)?;
        let weights = config.weights_precision();
        for (name, t) in tensors.iter_mut() {
            if t.shape.iter().product::<usize>() != t.data.len() {
                return invalid(format!("tensor `{name}`: shape {:?} does not match {} values", t.shape, t.data.len()));
            }
            if is_weights(name) && weights != Precision::F32 {
                t.data.iter_mut().for_each(|v| *v = weights.round(*v));
            }
            check_finite(name, &t.data)?;
        }
        metadata.remove(CONFIG_KEY);
        Ok(ModelFile { config, tensors, metadata })
    }

    /// Parse a model file from bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .or_else(|e| format_err(format!("not a readable safetensors file: {e}")))?;
        let mut metadata: BTreeMap<String, String> =
            header.metadata().clone().unwrap_or_default().into_iter().collect();
        let config_json =
            metadata.remove(CONFIG_KEY).ok_or_else(|| no_config(metadata.contains_key(INDEX_FORMAT_NAME)))?;
        let config = Config::from_json(&config_json)?;
        let st =
            SafeTensors::deserialize(bytes).or_else(|e| format_err(format!("not a readable safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let precision = if is_weights(&name) { config.weights_precision() } else { Precision::F32 };
            tensors.insert(name.clone(), read_tensor(&name, &view, precision)?);
        }
        Ok(ModelFile { config, tensors, metadata })
    }

    /// The tensor called `name`, or a format error naming it.
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::Format(format!("a `{}` model needs a tensor `{name}`", self.config.kind)))
    }

    /// Serialise to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let weights = self.config.weights_precision();
        let bytes: Vec<(String, Dtype, Vec<u8>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let precision = if is_weights(name) { weights } else { Precision::F32 };
                let (dtype, data) = encode(&t.data, precision);
                (name.clone(), dtype, data, t.shape.clone())
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, dtype, data, shape)| {
                TensorView::new(*dtype, shape.clone(), data)
                    .map(|v| (name.clone(), v))
                    .or_else(|e| invalid(format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        metadata.insert(CONFIG_KEY.to_string(), self.config.to_json());
        safetensors::serialize(views, Some(metadata)).or_else(|e| invalid(format!("cannot serialise: {e}")))
    }

    /// Write to `path` atomically (a temporary file, fsynced, renamed over `path`): a
    /// failed or interrupted save leaves an earlier file at `path` intact.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        write_atomically(path, &self.to_bytes()?).map_err(|e| named(path, e.into()))
    }

    /// Check the optional index tensor [`INDEX_TENSOR`]: 2-D, with `dim_out` columns.
    pub fn check_index(&self) -> Result<()> {
        if let Some(index) = self.tensors.get(INDEX_TENSOR) {
            let d = index.view2(INDEX_TENSOR)?.ncols();
            if d != self.config.dim_out {
                return format_err(format!(
                    "`{INDEX_TENSOR}` has {d} columns, expected dim_out {}",
                    self.config.dim_out
                ));
            }
        }
        Ok(())
    }
}

/// Write a model file from its parts (see [`ModelFile::from_parts`]) in one pass, with
/// no model built: checks the config, the tensors' finiteness and the index tensor's
/// width, stores `W` at the config's `weights_dtype`, then serialises once.
pub fn save_file(
    config_json: &str,
    tensors: BTreeMap<String, Tensor>,
    metadata: BTreeMap<String, String>,
    path: impl AsRef<Path>,
) -> Result<()> {
    let model = ModelFile::from_parts(config_json, tensors, metadata)?;
    model.check_index()?;
    model.save(path)
}

/// `text` parsed as the JSON header of a projroute file, checked for `format` equal
/// to `format_name` and an integer `version` at most `newest` (first, so that a newer
/// file is reported as such rather than as a schema mismatch); `what` names it in errors.
pub(crate) fn versioned_json(text: &str, what: &str, format_name: &str, newest: u32) -> Result<Value> {
    let value: Value = serde_json::from_str(text).or_else(|e| format_err(format!("{what} is not valid JSON: {e}")))?;
    if value.get("format").and_then(Value::as_str) != Some(format_name) {
        return format_err(format!("{what} `format` is not \"{format_name}\""));
    }
    let version = value
        .get("version")
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::Format(format!("{what} has no integer `version`")))?;
    if version > newest as u64 {
        return Err(Error::UnsupportedVersion { found: version.min(u32::MAX as u64) as u32, supported: newest });
    }
    Ok(value)
}

/// The config of the model file at `path`, reading only its safetensors header (the
/// 8-byte length and the header JSON), checked as [`Config::from_json`] does. A header
/// longer than the file or than 100 MB, a data section of the wrong size or a header
/// without a projroute config is an [`Error::Format`]; errors name the file.
pub fn read_config(path: impl AsRef<Path>) -> Result<Config> {
    let path = path.as_ref();
    let read = || -> Result<Config> {
        let mut metadata = read_header_metadata(path)?;
        match metadata.remove(CONFIG_KEY) {
            Some(Value::String(text)) => Config::from_json(&text),
            Some(_) => format_err(format!("`{CONFIG_KEY}` metadata entry is not a string")),
            None => Err(no_config(metadata.contains_key(INDEX_FORMAT_NAME))),
        }
    };
    read().map_err(|e| named(path, e))
}

/// The error for a safetensors file without a model config: an answer index (`index`)
/// or a foreign file.
fn no_config(index: bool) -> Error {
    Error::Format(if index {
        format!("an answer index file ({INDEX_FORMAT_NAME}), not a model")
    } else {
        format!("safetensors file has no `{CONFIG_KEY}` config: not a projroute model")
    })
}

/// The `__metadata__` entries of the safetensors file at `path`, reading only its
/// header, after checking that the header's tensors fill the rest of the file exactly
/// (a truncated file is an [`Error::Format`]). Errors do not name the file.
pub(crate) fn read_header_metadata(path: &Path) -> Result<Map<String, Value>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let file_len = file.metadata()?.len();
    let unreadable = |why: String| Error::Format(format!("not a readable safetensors file: {why}"));
    let mut len = [0u8; 8];
    if file_len < 8 {
        return Err(unreadable(format!("{file_len} bytes, shorter than the 8-byte header length")));
    }
    file.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_SIZE {
        return Err(unreadable(format!("header length {n} exceeds the limit of {MAX_HEADER_SIZE} bytes")));
    }
    if n > file_len - 8 {
        return Err(unreadable(format!("header length {n} runs past the end of the file ({file_len} bytes)")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)?;
    let header: Value =
        serde_json::from_slice(&header).map_err(|e| unreadable(format!("header is not valid JSON: {e}")))?;
    let Value::Object(entries) = header else {
        return Err(unreadable("header is not a JSON object".into()));
    };
    let mut data_len = 0u64;
    let mut metadata = Map::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            if let Value::Object(m) = entry {
                metadata = m;
            }
            continue;
        }
        let end = entry
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|o| o.get(1))
            .and_then(Value::as_u64)
            .ok_or_else(|| unreadable(format!("tensor `{name}` has no data offsets")))?;
        data_len = data_len.max(end);
    }
    if 8 + n + data_len != file_len {
        return Err(unreadable(format!(
            "header and tensors take {} bytes, the file has {file_len} (truncated?)",
            8 + n + data_len
        )));
    }
    Ok(metadata)
}

/// `e` with `path` in its message (I/O and format errors).
pub(crate) fn named(path: &Path, e: Error) -> Error {
    match e {
        Error::Io(io) => Error::Io(std::io::Error::new(io.kind(), format!("{}: {io}", path.display()))),
        Error::Format(msg) => Error::Format(format!("{}: {msg}", path.display())),
        other => other,
    }
}

/// The safetensors dtype a tensor stored at `precision` has.
fn dtype(precision: Precision) -> Dtype {
    match precision {
        Precision::F32 => Dtype::F32,
        Precision::F16 => Dtype::F16,
        Precision::BF16 => Dtype::BF16,
    }
}

/// The safetensors dtype of `precision` and `data` encoded in it (little-endian).
fn encode(data: &[f32], precision: Precision) -> (Dtype, Vec<u8>) {
    let bytes = match precision {
        Precision::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Precision::F16 => data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        Precision::BF16 => data.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
    };
    (dtype(precision), bytes)
}

fn read_tensor(name: &str, view: &TensorView<'_>, precision: Precision) -> Result<Tensor> {
    let expected = dtype(precision);
    if view.dtype() != expected {
        return format_err(format!("tensor `{name}` has dtype {:?}, expected {expected:?}", view.dtype()));
    }
    let bytes = view.data();
    let data: Vec<f32> = match precision {
        Precision::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Precision::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Precision::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
    };
    check_finite(name, &data)?;
    Ok(Tensor { shape: view.shape().to_vec(), data })
}

fn check_finite(name: &str, data: &[f32]) -> Result<()> {
    if !data.iter().all(|v| v.is_finite()) {
        return format_err(format!("tensor `{name}` contains NaN or infinite values"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: &str) -> Config {
        Config {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            kind: kind.into(),
            dim_in: 2,
            dim_out: 2,
            n_clusters: None,
            temperature: None,
            top_k: None,
            coverage: None,
            question_counts: None,
            ranks: None,
            cluster_temperature: None,
            weights_dtype: None,
            nodes: None,
            transformer: None,
            ensemble: None,
            prle: None,
            input_dim: None,
            fit: Map::new(),
        }
    }

    fn model() -> ModelFile {
        let mut tensors = BTreeMap::new();
        tensors.insert("W".to_string(), Tensor::new(vec![2, 2], vec![1.0, 0.0, 0.0, 1.0]).unwrap());
        ModelFile { config: config("global"), tensors, metadata: BTreeMap::new() }
    }

    #[test]
    fn round_trip() {
        let m = model();
        let back = ModelFile::from_bytes(&m.to_bytes().unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn newer_version_is_reported_as_such() {
        let text = r#"{"format":"projroute","version":99,"kind":"warp","dim_in":1}"#;
        match Config::from_json(text) {
            Err(Error::UnsupportedVersion { found: 99, supported: FORMAT_VERSION }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_and_foreign_files_are_format_errors() {
        let bytes = model().to_bytes().unwrap();
        for cut in [0, 7, 20, bytes.len() - 1] {
            assert!(matches!(ModelFile::from_bytes(&bytes[..cut]), Err(Error::Format(_))), "cut {cut}");
        }
        let foreign =
            safetensors::serialize(vec![("x", TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).unwrap())], None)
                .unwrap();
        let err = ModelFile::from_bytes(&foreign).unwrap_err().to_string();
        assert!(err.contains("not a projroute model"), "{err}");
    }

    #[test]
    fn non_finite_and_wrong_dtype_are_rejected() {
        let mut m = model();
        m.tensors.get_mut("W").unwrap().data[0] = f32::INFINITY;
        let err = ModelFile::from_bytes(&m.to_bytes().unwrap()).unwrap_err().to_string();
        assert!(err.contains("NaN or infinite"), "{err}");

        let mut meta = HashMap::new();
        meta.insert(CONFIG_KEY.to_string(), config("global").to_json());
        let f64s =
            safetensors::serialize(vec![("W", TensorView::new(Dtype::F64, vec![1], &[0u8; 8]).unwrap())], Some(meta))
                .unwrap();
        let err = ModelFile::from_bytes(&f64s).unwrap_err().to_string();
        assert!(err.contains("expected F32"), "{err}");
    }

    #[test]
    fn read_config_reads_the_header_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let m = model();
        m.save(&path).unwrap();
        assert_eq!(read_config(&path).unwrap(), m.config);

        let bytes = m.to_bytes().unwrap();
        for cut in [0, 5, 8, 20, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            match read_config(&path) {
                Err(Error::Format(msg)) => {
                    assert!(msg.contains("m.safetensors"), "cut {cut}: {msg}")
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        let mut absurd = u64::MAX.to_le_bytes().to_vec();
        absurd.extend_from_slice(b"{}");
        std::fs::write(&path, absurd).unwrap();
        let err = read_config(&path).unwrap_err().to_string();
        assert!(err.contains("header length"), "{err}");

        let foreign =
            safetensors::serialize(vec![("x", TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).unwrap())], None)
                .unwrap();
        std::fs::write(&path, foreign).unwrap();
        let err = read_config(&path).unwrap_err().to_string();
        assert!(err.contains("m.safetensors: ") && err.contains("not a projroute model"), "{err}");

        match read_config(dir.path().join("nope.safetensors")) {
            Err(Error::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
                assert!(e.to_string().contains("nope.safetensors"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn from_parts_equals_the_file_it_writes() {
        let mut c = config("global");
        c.weights_dtype = Some("bfloat16".into());
        let tensors = BTreeMap::from([
            ("W".to_string(), Tensor::new(vec![2, 2], vec![1.1, 0.3, -2.7, 1e-3]).unwrap()),
            ("bias".to_string(), Tensor::new(vec![2], vec![0.1, 0.2]).unwrap()),
        ]);
        let metadata = BTreeMap::from([("k".to_string(), "v".to_string()), (CONFIG_KEY.to_string(), "x".to_string())]);
        let m = ModelFile::from_parts(&c.to_json(), tensors, metadata).unwrap();
        assert_eq!(m.tensors["W"].data[0], Precision::BF16.round(1.1));
        assert_eq!(m.tensors["bias"].data[0], 0.1);
        assert_eq!(m.metadata.len(), 1);
        assert_eq!(ModelFile::from_bytes(&m.to_bytes().unwrap()).unwrap(), m);

        let nan = BTreeMap::from([("W".to_string(), Tensor::new(vec![1], vec![f32::NAN]).unwrap())]);
        let err = ModelFile::from_parts(&c.to_json(), nan, BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("NaN or infinite"), "{err}");
        assert!(ModelFile::from_parts("{}", BTreeMap::new(), BTreeMap::new()).is_err());
    }

    #[test]
    fn save_file_checks_the_index_width() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let mut tensors = model().tensors;
        tensors.insert(INDEX_TENSOR.to_string(), Tensor::new(vec![1, 3], vec![1.0; 3]).unwrap());
        let err = save_file(&config("global").to_json(), tensors.clone(), BTreeMap::new(), &path).unwrap_err();
        assert!(err.to_string().contains("expected dim_out 2"), "{err}");
        assert!(!path.exists());
        tensors.insert(INDEX_TENSOR.to_string(), Tensor::new(vec![1, 2], vec![1.0; 2]).unwrap());
        save_file(&config("global").to_json(), tensors.clone(), BTreeMap::new(), &path).unwrap();
        assert_eq!(ModelFile::open(&path).unwrap().tensors, tensors);
    }
}
