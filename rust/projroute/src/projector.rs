//! `Projector`: any projroute model, loaded from a file and ready to project.
//!
//! The kinds are registered in one place, [`build`]: adding a kind is its own file
//! (a [`Model`] with a `from_model`), a `mod` line in `lib.rs` and one line there.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ndarray::{Array2, ArrayView2, CowArray, Ix2};

use crate::error::{format_err, Result};
use crate::format::{Config, ModelFile, Tensor, INDEX_TENSOR};
use crate::model::Model;
use crate::precision::Precision;
use crate::routing::Routing;
use crate::{Federated, Global, KeyRule, Keyed, Lda};

/// Tensors of a bridged model's input map (see [`Config::input_dim`]).
const BRIDGE_W: &str = "bridge.W";
const BRIDGE_BIAS: &str = "bridge.bias";

/// The registry: the model of `m`'s kind, built from its tensors and config.
fn build(m: &ModelFile) -> Result<Box<dyn Model>> {
    Ok(match m.config.kind.as_str() {
        "global" => Box::new(Global::from_model(m)?),
        "federated" => Box::new(Federated::from_model(m)?),
        "lda" => Box::new(Lda::from_model(m)?),
        "prle" => Box::new(crate::Prle::from_model(m)?),
        "tree" => Box::new(Keyed::from_model(m, KeyRule::Tree)?),
        "hierarchical" => Box::new(Keyed::from_model(m, KeyRule::Hierarchical)?),
        #[cfg(feature = "candle")]
        "transformer" => Box::new(crate::Transformer::from_model(m)?),
        #[cfg(feature = "candle")]
        "transformer_ensemble" => Box::new(crate::Ensemble::from_model(m)?),
        #[cfg(not(feature = "candle"))]
        "transformer" | "transformer_ensemble" => {
            return format_err(format!("`{}` models need projroute built with the `candle` feature", m.config.kind))
        }
        other => return format_err(format!("unknown model kind `{other}`")),
    })
}

/// The input map of a bridged model, `x @ bridge.W + bridge.bias` (float32), if its
/// config has `input_dim`; `bridge.*` tensors without it are left for the caller to
/// reject as unexpected.
fn input_map(m: &ModelFile) -> Result<Option<Global>> {
    let Some(dim) = m.config.input_dim else { return Ok(None) };
    let w = m.tensor(BRIDGE_W)?.view2(BRIDGE_W)?;
    if w.dim() != (dim, m.config.dim_in) {
        return format_err(format!(
            "tensor `{BRIDGE_W}` has shape {:?}, the config says ({dim}, {})",
            w.shape(),
            m.config.dim_in
        ));
    }
    let bias = match m.tensors.get(BRIDGE_BIAS) {
        Some(t) => Some(t.view1(BRIDGE_BIAS)?.to_owned()),
        None => None,
    };
    Global::new(w.to_owned(), bias, Precision::F32).map(Some)
}

/// A loaded model of any kind, with its config, other metadata and optional search
/// index. Cloning is cheap (the model is shared).
///
/// A bridged model (config `input_dim`) first maps queries from another encoder's
/// space by its input map; every method then takes `input_dim`-wide queries.
#[derive(Clone, Debug)]
pub struct Projector {
    model: Arc<dyn Model>,
    input: Option<Arc<Global>>,
    config: Config,
    metadata: BTreeMap<String, String>,
    index: Option<Tensor>,
}

impl Projector {
    /// Load and validate a model file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_model(ModelFile::open(path)?)
    }

    /// Build from a parsed model file, checking tensors against its config. The file
    /// is taken by value and its tensors are dropped once the model is built (packed),
    /// so a loaded model holds its weights once.
    pub fn from_model(mut m: ModelFile) -> Result<Self> {
        let c = &m.config;
        // Found by fuzzing (build_and_project): an empty output dimension reached the
        // blend's row chunking, which panics on a zero width.
        if c.dim_in == 0 || c.dim_out == 0 || c.input_dim == Some(0) {
            return format_err(format!("dimensions must be at least 1, got {} -> {}", c.dim_in, c.dim_out));
        }
        let model = build(&m)?;
        let input = input_map(&m)?;
        let mut expected = model.tensor_names();
        if input.is_some() {
            expected.extend([BRIDGE_W.to_string(), BRIDGE_BIAS.to_string()]);
        }
        if let Some(extra) = m.tensors.keys().find(|k| !expected.contains(k) && *k != INDEX_TENSOR) {
            return format_err(format!("unexpected tensor `{extra}` in a `{}` model", c.kind));
        }
        if (model.dim_in(), model.dim_out()) != (c.dim_in, c.dim_out) {
            return format_err(format!(
                "tensors give dimensions {} -> {}, config says {} -> {}",
                model.dim_in(),
                model.dim_out(),
                c.dim_in,
                c.dim_out
            ));
        }
        m.check_index()?;
        if let Some(k) = model.n_clusters() {
            if c.n_clusters != Some(k) {
                return format_err(format!("tensors have {k} clusters, config says {:?}", c.n_clusters));
            }
        }
        let index = m.tensors.remove(INDEX_TENSOR);
        Ok(Projector {
            model: Arc::from(model),
            input: input.map(Arc::new),
            config: m.config,
            metadata: m.metadata,
            index,
        })
    }

    /// Export as a model file: exactly the tensors the model was built from (maps
    /// unpacked), the index, the config and the metadata. Building a projector from it
    /// gives this one back.
    pub fn to_model(&self) -> ModelFile {
        ModelFile { config: self.config.clone(), tensors: self.tensors(), metadata: self.metadata.clone() }
    }

    /// The tensors of [`to_model`](Self::to_model), by name.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut tensors = self.model.tensors();
        if let Some(input) = &self.input {
            for (name, t) in input.tensors() {
                tensors.insert(format!("bridge.{name}"), t);
            }
        }
        if let Some(index) = &self.index {
            tensors.insert(INDEX_TENSOR.to_string(), index.clone());
        }
        tensors
    }

    /// Write the model to `path` (see [`to_model`](Self::to_model)).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.to_model().save(path)
    }

    /// The model itself.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    /// The config it was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Other metadata strings of its file (for example answer texts).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The answer embeddings (N, D_out) stored with the model for search, if any.
    pub fn index(&self) -> Option<&Tensor> {
        self.index.as_ref()
    }

    /// Model kind as written in the file.
    pub fn kind(&self) -> &'static str {
        self.model.kind()
    }

    /// Input dimension (a bridged model's `input_dim`).
    pub fn dim_in(&self) -> usize {
        self.input.as_ref().map_or(self.model.dim_in(), |i| i.dim_in())
    }

    /// Output dimension.
    pub fn dim_out(&self) -> usize {
        self.model.dim_out()
    }

    /// Number of clusters or heads, for routed kinds.
    pub fn n_clusters(&self) -> Option<usize> {
        self.model.n_clusters()
    }

    /// Queries `x` as the kind takes them: through the bridge of a bridged model, else as given.
    fn bridged<'a>(&self, x: ArrayView2<'a, f32>) -> Result<CowArray<'a, f32, Ix2>> {
        Ok(match &self.input {
            Some(input) => input.project(x)?.into(),
            None => x.into(),
        })
    }

    /// Project queries `x` (B, D_in) to (B, D_out). Keyed kinds need
    /// [`project_keyed`](Self::project_keyed) instead.
    pub fn project(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.model.project(self.bridged(x)?.view())
    }

    /// Project queries `x` (B, D_in) with one key per query (tree ids or paths) to
    /// (B, D_out); only for keyed kinds (`tree`, `hierarchical`).
    pub fn project_keyed(&self, x: ArrayView2<f32>, keys: &[&str]) -> Result<Array2<f32>> {
        self.model.project_keyed(self.bridged(x)?.view(), keys)
    }

    /// The key of the node that serves each of `keys` (keyed kinds only): the key
    /// itself, an ancestor path, or `""` (the fallback map).
    pub fn resolve(&self, keys: &[&str]) -> Result<Vec<String>> {
        self.model.resolve(keys)
    }

    /// Routing weights of queries `x` (B, D_in); `None` for unrouted kinds.
    pub fn route(&self, x: ArrayView2<f32>) -> Result<Option<Routing>> {
        self.model.route(self.bridged(x)?.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in (-1, 1), different for every `seed`.
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104_729) as f32 * 0.618_034).sin()).collect()
    }

    fn tensor(shape: &[usize], seed: usize) -> Tensor {
        Tensor::new(shape.to_vec(), values(shape.iter().product(), seed)).unwrap()
    }

    /// A model file as a reader sees it: through its bytes.
    fn file<S: AsRef<str>>(config: &str, tensors: &[(S, Tensor)]) -> ModelFile {
        let tensors = tensors.iter().map(|(n, t)| (n.as_ref().to_string(), t.clone())).collect();
        let metadata = BTreeMap::from([("answers.texts".to_string(), "[\"a\"]".to_string())]);
        let m = ModelFile::from_parts(config, tensors, metadata).unwrap();
        ModelFile::from_bytes(&m.to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn zero_dimensions_are_format_errors() {
        let cases = [
            (r#""kind":"federated","dim_in":2,"dim_out":0,"n_clusters":2,"temperature":0.1,"top_k":1"#, [2, 2, 0]),
            (r#""kind":"federated","dim_in":0,"dim_out":2,"n_clusters":2,"temperature":0.1,"top_k":1"#, [2, 0, 2]),
            (r#""kind":"tree","dim_in":3,"dim_out":0,"nodes":[""]"#, [1, 3, 0]),
        ];
        for (fields, w) in cases {
            let config = format!(r#"{{"format":"projroute","version":1,{fields}}}"#);
            let mut tensors = BTreeMap::from([("W".to_string(), tensor(&w, 1))]);
            if fields.contains("federated") {
                tensors.insert("centroids".into(), tensor(&[2, w[1]], 2));
            }
            let m = ModelFile::from_parts(&config, tensors, BTreeMap::new()).unwrap();
            let err = Projector::from_model(m).unwrap_err().to_string();
            assert!(err.contains("dimensions must be at least 1"), "{err}");
        }
    }

    /// `from_model` then `to_model` gives the file back, bit for bit, and serves it the same.
    fn assert_round_trip(m: ModelFile) {
        let p = Projector::from_model(m.clone()).unwrap();
        let back = p.to_model();
        assert_eq!(back.config, m.config);
        assert_eq!(back.metadata, m.metadata);
        assert_eq!(back.tensors.keys().collect::<Vec<_>>(), m.tensors.keys().collect::<Vec<_>>());
        for (name, t) in &m.tensors {
            let b = &back.tensors[name];
            assert_eq!(b.shape, t.shape, "{name}");
            let bits = |t: &Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert!(bits(b) == bits(t), "tensor `{name}` differs after export");
        }
        assert_eq!(ModelFile::from_bytes(&back.to_bytes().unwrap()).unwrap(), m);
        let again = Projector::from_model(back).unwrap();
        let x = ndarray::Array2::from_shape_vec((3, p.dim_in()), values(3 * p.dim_in(), 99)).unwrap();
        match p.kind() {
            "tree" | "hierarchical" => {
                let keys = ["a/b/c", "zz", "a"];
                assert_eq!(p.project_keyed(x.view(), &keys).unwrap(), again.project_keyed(x.view(), &keys).unwrap());
            }
            _ => assert_eq!(p.project(x.view()).unwrap(), again.project(x.view()).unwrap()),
        }
    }

    #[test]
    fn global_with_bias_and_index_exports_exactly() {
        let config = r#"{"format":"projroute","version":1,"kind":"global","dim_in":260,"dim_out":19}"#;
        let m = file(
            config,
            &[("W", tensor(&[260, 19], 1)), ("bias", tensor(&[19], 2)), (INDEX_TENSOR, tensor(&[5, 19], 3))],
        );
        assert_eq!(Projector::from_model(m.clone()).unwrap().index(), m.tensors.get(INDEX_TENSOR));
        assert_round_trip(m);
    }

    #[test]
    fn federated_exports_exactly() {
        let centroid = r#"{"format":"projroute","version":1,"kind":"federated","dim_in":260,"dim_out":19,
            "n_clusters":3,"temperature":0.1,"top_k":2}"#;
        assert_round_trip(file(centroid, &[("centroids", tensor(&[3, 260], 1)), ("W", tensor(&[3, 260, 19], 2))]));
        let per_question = r#"{"format":"projroute","version":1,"kind":"federated","dim_in":260,"dim_out":19,
            "n_clusters":3,"temperature":0.1,"top_k":2,"question_counts":[2,4,1],"cluster_temperature":0.5,
            "weights_dtype":"float16"}"#;
        let m = file(
            per_question,
            &[
                ("centroids", tensor(&[3, 260], 1)),
                ("questions", tensor(&[7, 260], 3)),
                ("prior", Tensor::new(vec![7], (1..=7).map(|i| i as f32 * 0.3).collect()).unwrap()),
                ("W", tensor(&[3, 260, 19], 2)),
            ],
        );
        assert_eq!(m.tensors["W"].data[0], crate::Precision::F16.round(values(1, 2)[0]));
        assert_round_trip(m);
    }

    #[test]
    fn bridged_model_maps_its_input_first() {
        let config = r#"{"format":"projroute","version":1,"kind":"federated","dim_in":12,"dim_out":7,
            "n_clusters":3,"temperature":0.1,"top_k":2,"input_dim":5}"#;
        let tensors = [
            ("centroids", tensor(&[3, 12], 1)),
            ("W", tensor(&[3, 12, 7], 2)),
            ("bridge.W", tensor(&[5, 12], 3)),
            ("bridge.bias", tensor(&[12], 4)),
        ];
        let m = file(config, &tensors);
        let p = Projector::from_model(m.clone()).unwrap();
        assert_eq!((p.dim_in(), p.dim_out()), (5, 7));
        let x = Array2::from_shape_vec((4, 5), values(20, 9)).unwrap();
        let inner = Projector::from_model(file(&config.replace(r#","input_dim":5"#, ""), &tensors[..2])).unwrap();
        let bridged = x.dot(&tensors[2].1.view2("W").unwrap()) + tensors[3].1.view1("b").unwrap();
        let close = |got: Array2<f32>, want: Array2<f32>| {
            assert_eq!(got.dim(), want.dim());
            assert!(got.iter().zip(want.iter()).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs())));
        };
        close(p.project(x.view()).unwrap(), inner.project(bridged.view()).unwrap());
        let dense = |p: &Projector, x: &Array2<f32>| p.route(x.view()).unwrap().unwrap().to_dense(3);
        close(dense(&p, &x), dense(&inner, &bridged));
        assert!(p.project(bridged.view()).unwrap_err().to_string().contains("columns"));
        assert_round_trip(m);
        // An input map needs `input_dim`, and `input_dim` needs a map of the right shape.
        let no_dim = file(&config.replace(r#","input_dim":5"#, ""), &tensors);
        assert!(Projector::from_model(no_dim).unwrap_err().to_string().contains("unexpected tensor `bridge.W`"));
        let wrong = file(&config.replace(r#""input_dim":5"#, r#""input_dim":6"#), &tensors);
        assert!(Projector::from_model(wrong).unwrap_err().to_string().contains("bridge.W"));
        assert!(Projector::from_model(file(config, &tensors[..2])).is_err());
    }

    #[test]
    fn lda_and_keyed_export_exactly() {
        let lda = r#"{"format":"projroute","version":1,"kind":"lda","dim_in":8,"dim_out":5,
            "n_clusters":4,"temperature":0.2,"top_k":4}"#;
        assert_round_trip(file(lda, &[("centroids", tensor(&[4, 8], 1)), ("answers", tensor(&[4, 5], 2))]));
        for (kind, dtype) in [("tree", "float32"), ("hierarchical", "bfloat16")] {
            let config = format!(
                r#"{{"format":"projroute","version":1,"kind":"{kind}","dim_in":20,"dim_out":33,
                "nodes":["", "a", "a/b"],"weights_dtype":"{dtype}"}}"#
            );
            assert_round_trip(file(&config, &[("W", tensor(&[3, 20, 33], 4))]));
        }
    }

    #[test]
    fn keyless_kinds_refuse_keys() {
        let config = r#"{"format":"projroute","version":1,"kind":"global","dim_in":2,"dim_out":2}"#;
        let p = Projector::from_model(file(config, &[("W", tensor(&[2, 2], 1))])).unwrap();
        assert!(p.resolve(&["a"]).unwrap_err().to_string().contains("takes no keys"));
        let x = ndarray::Array2::<f32>::ones((1, 2));
        assert!(p.project_keyed(x.view(), &["a"]).unwrap_err().to_string().contains("takes no keys"));
        assert_eq!(p.route(x.view()).unwrap(), None);
    }

    #[test]
    fn projector_and_models_are_send_and_sync() {
        fn check<T: Send + Sync + ?Sized>(_: &T) {}
        let config = r#"{"format":"projroute","version":1,"kind":"global","dim_in":2,"dim_out":2}"#;
        let p = Projector::from_model(file(config, &[("W", tensor(&[2, 2], 1))])).unwrap();
        check(&p);
        check(p.model());
        let x = ndarray::Array2::<f32>::ones((4, 2));
        let want = p.project(x.view()).unwrap();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..2).map(|_| s.spawn(|| p.project(x.view()).unwrap())).collect();
            handles.into_iter().for_each(|h| assert_eq!(h.join().unwrap(), want));
        });
    }

    /// Shapes of a `transformer` student's tensors (PyTorch layouts), under `prefix`.
    #[cfg(feature = "candle")]
    fn student(prefix: &str, d_in: usize, d: usize, d_out: usize, nk: usize, ffn: usize) -> Vec<(String, Vec<usize>)> {
        let mut shapes = vec![
            ("input.weight".to_string(), vec![d, d_in]),
            ("input.bias".to_string(), vec![d]),
            ("norm.weight".to_string(), vec![d]),
            ("norm.bias".to_string(), vec![d]),
            ("output.weight".to_string(), vec![d_out, d]),
            ("output.bias".to_string(), vec![d_out]),
            ("skip.weight".to_string(), vec![d_out, d_in]),
        ];
        for (name, shape) in [
            ("norm1.weight", vec![d]),
            ("norm1.bias", vec![d]),
            ("query.weight", vec![d, d]),
            ("query.bias", vec![d]),
            ("keys", vec![nk, d]),
            ("values", vec![nk, d]),
            ("out.weight", vec![d, d]),
            ("out.bias", vec![d]),
            ("norm2.weight", vec![d]),
            ("norm2.bias", vec![d]),
            ("ffn1.weight", vec![ffn, d]),
            ("ffn1.bias", vec![ffn]),
            ("ffn2.weight", vec![d, ffn]),
            ("ffn2.bias", vec![d]),
        ] {
            shapes.push((format!("layers.0.{name}"), shape));
        }
        shapes.into_iter().map(|(n, s)| (format!("{prefix}{n}"), s)).collect()
    }

    #[cfg(feature = "candle")]
    #[test]
    fn transformer_and_ensemble_export_their_source_tensors() {
        let arch =
            r#""transformer":{"d_model":8,"n_heads":2,"n_layers":1,"num_keys":3,"ffn_dim":16,"layer_norm_eps":1e-5}"#;
        let owned = |shapes: Vec<(String, Vec<usize>)>| -> Vec<(String, Tensor)> {
            shapes.into_iter().enumerate().map(|(i, (n, s))| (n, tensor(&s, i))).collect()
        };

        let config =
            format!(r#"{{"format":"projroute","version":1,"kind":"transformer","dim_in":6,"dim_out":5,{arch}}}"#);
        let tensors = owned(student("", 6, 8, 5, 3, 16));
        assert_round_trip(file(&config, &tensors));

        let config = format!(
            r#"{{"format":"projroute","version":1,"kind":"transformer_ensemble","dim_in":6,"dim_out":5,{arch},
            "ensemble":{{"n_domains":2,"top_k":1,"router_hidden":4}}}}"#
        );
        let mut shapes = vec![
            ("router.0.weight".to_string(), vec![4, 6]),
            ("router.0.bias".to_string(), vec![4]),
            ("router.2.weight".to_string(), vec![2, 4]),
            ("router.2.bias".to_string(), vec![2]),
        ];
        for d in 0..2 {
            shapes.extend(student(&format!("students.{d}."), 6, 8, 5, 3, 16));
        }
        let tensors = owned(shapes);
        assert_round_trip(file(&config, &tensors));
    }
}
