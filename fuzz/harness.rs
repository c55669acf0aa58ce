// The fuzzed entry points, shared by the cargo-fuzz targets (fuzz/fuzz_targets) and the
// corpus replay test that CI runs (rust/projroute/tests/fuzz_corpus.rs). Each takes
// arbitrary bytes; returning an error is fine, a panic or a crash is a bug.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ndarray::Array2;
use projroute::{AnswerIndex, ModelFile, Projector, Tensor};

/// Most values a fuzzed batch may hold, so that each input runs fast.
const MAX_BATCH_VALUES: usize = 1 << 16;

/// Model and index files from bytes: the full parsers, the header-only readers (on a
/// scratch file), and, when a model loads, a projection through it.
pub fn load_file(data: &[u8]) {
    if let Ok(model) = ModelFile::from_bytes(data) {
        let _ = model.to_bytes();
        if let Ok(projector) = Projector::from_model(model) {
            exercise(&projector, 3, &[0.5, -1.0, 0.25, 2.0]);
        }
    }
    if let Ok(index) = AnswerIndex::from_bytes(data) {
        let _ = index.to_bytes();
    }
    let path = scratch_file();
    if std::fs::write(&path, data).is_ok() {
        let _ = projroute::read_config(&path);
        let _ = projroute::file_kind(&path);
        let _ = projroute::read_index_header(&path);
    }
}

/// A model of a kind, shapes, routing parameters and values read from the bytes (shapes
/// sometimes wrong on purpose, values any f32 bit pattern), built as a caller's tensors
/// are (`from_parts`), then a batch of arbitrary shape and values projected and routed.
pub fn build_and_project(data: &[u8]) {
    let mut r = Reader(data);
    let kinds = ["global", "federated", "lda", "tree", "hierarchical"];
    let kind = kinds[r.byte() as usize % kinds.len()];
    let (d_in, d_out, k) = (r.small(9), r.small(9), r.small(7));
    let mut config = serde_json::json!({
        "format": "projroute", "version": 1, "kind": kind, "dim_in": d_in, "dim_out": d_out,
    });
    let mut tensors = BTreeMap::new();
    let mut add = |r: &mut Reader, name: &str, shape: Vec<usize>| {
        // One dimension in eight is replaced by an arbitrary one.
        let shape: Vec<usize> = shape.into_iter().map(|n| if r.one_in(8) { r.small(9) } else { n }).collect();
        let len: usize = shape.iter().product();
        let data = (0..len).map(|_| r.value()).collect();
        tensors.insert(name.to_string(), Tensor { shape, data });
    };
    match kind {
        "global" => {
            add(&mut r, "W", vec![d_in, d_out]);
            if r.one_in(2) {
                add(&mut r, "bias", vec![d_out]);
            }
        }
        "tree" | "hierarchical" => {
            let nodes = ["", "a", "b", "a/b", "a", "a/b/c"];
            let n = k.min(nodes.len());
            let start = usize::from(r.one_in(4));
            config["nodes"] = nodes[start..n.max(start)].iter().map(|s| serde_json::json!(s)).collect();
            add(&mut r, "W", vec![n, d_in, d_out]);
        }
        _ => {
            config["n_clusters"] = k.into();
            config["temperature"] = r.value().into();
            config["top_k"] = r.small(9).into();
            if r.one_in(3) {
                config["coverage"] = r.value().into();
            }
            add(&mut r, "centroids", vec![k, d_in]);
            if kind == "lda" {
                add(&mut r, "answers", vec![k, d_out]);
            } else {
                add(&mut r, "W", vec![k, d_in, d_out]);
                match r.byte() % 4 {
                    0 => add(&mut r, "prior", vec![k]),
                    1 => {
                        let counts: Vec<usize> = (0..k).map(|_| r.small(4)).collect();
                        add(&mut r, "questions", vec![counts.iter().sum(), d_in]);
                        config["question_counts"] = counts.into();
                        if r.one_in(2) {
                            config["cluster_temperature"] = r.value().into();
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let dtypes = ["float32", "float16", "bfloat16"];
    config["weights_dtype"] = dtypes[r.byte() as usize % 3].into();
    let Ok(model) = ModelFile::from_parts(&config.to_string(), tensors, BTreeMap::new()) else { return };
    let Ok(projector) = Projector::from_model(model) else { return };
    let b = r.small(9);
    let values: Vec<f32> = (0..16).map(|_| r.value()).collect();
    exercise(&projector, b, &values);
}

/// Project and route a batch (b, dim_in) cycling `values`, with and without keys.
fn exercise(projector: &Projector, b: usize, values: &[f32]) {
    let d = projector.dim_in();
    if b * d > MAX_BATCH_VALUES {
        return;
    }
    let x = Array2::from_shape_fn((b, d), |(i, j)| values[(i * d + j) % values.len()]);
    let _ = projector.project(x.view());
    let _ = projector.route(x.view());
    let keys: Vec<&str> = ["", "a", "a/b", "b/c", "zz"].iter().cycle().take(b).copied().collect();
    let _ = projector.project_keyed(x.view(), &keys);
    let _ = projector.resolve(&keys);
}

/// This thread's scratch file for the header-only readers.
fn scratch_file() -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
    std::env::temp_dir().join(format!("projroute-fuzz-{}-{thread}.safetensors", std::process::id()))
}

/// Reads small numbers and f32 values off the input; zeros once it runs out.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map(|(b, r)| (*b, r)).unwrap_or((0, &[]));
        self.0 = rest;
        first
    }

    /// True for one byte value in `n` (`n` >= 1).
    fn one_in(&mut self, n: u8) -> bool {
        self.byte().is_multiple_of(n)
    }

    /// A number in 0..n.
    fn small(&mut self, n: usize) -> usize {
        self.byte() as usize % n
    }

    /// An f32 from four bytes (NaN, infinities and subnormals included), or a small
    /// ordinary number when the tag byte says so (most tensors should be valid).
    fn value(&mut self) -> f32 {
        if !self.one_in(4) {
            return (self.byte() as i8) as f32 / 16.0;
        }
        f32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
}
