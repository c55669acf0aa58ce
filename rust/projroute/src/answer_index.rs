//! The answer index file (`projroute-index`): answer vectors, their ids and texts in
//! one safetensors file, with a JSON header. See `docs/format.md`.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array2, ArrayView2};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::atomic_file::write_atomically;
use crate::error::{format_err, invalid, Error, Result};
use crate::format::{named, read_header_metadata, versioned_json, CONFIG_KEY};

/// `__metadata__` key holding an index file's JSON header, and its `format` value.
pub const INDEX_FORMAT_NAME: &str = "projroute-index";
/// Newest index format version this build reads. Version 2 added the approximate
/// graph; a file without one is still written as version 1, which older builds read.
pub const INDEX_FORMAT_VERSION: u32 = 2;

const EMBEDDINGS: &str = "embeddings";
const IDS: &str = "ids";
const TEXTS: &str = "texts";
const TEXT_OFFSETS: &str = "text_offsets";
const ANN_GRAPH: &str = "ann_graph";

/// Parameters of an approximate (HNSW) graph, recorded in the index header under `ann`.
/// The graph is `usearch`'s, over the unit answer vectors stored as float16, with the
/// inner product as similarity (the cosine, on unit vectors).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnParams {
    /// Always `"hnsw"`.
    pub method: String,
    /// The library that wrote (and reads) the graph: `"usearch"`.
    pub library: String,
    /// `usearch`'s version that wrote the graph, e.g. `"2.26.6"`.
    pub library_version: String,
    /// Similarity: `"ip"`, the inner product of unit vectors.
    pub metric: String,
    /// Precision of the graph's copy of the vectors: `"f16"`. Candidates are re-scored
    /// exactly on the float32 `embeddings`.
    pub vectors: String,
    /// Links per node and layer (HNSW's M; the bottom layer holds 2M).
    pub connectivity: usize,
    /// Candidates kept while inserting (HNSW's ef_construction).
    pub ef_construction: usize,
    /// Candidates kept while searching, by default (HNSW's ef): the graph returns
    /// max(k, ef_search) candidates, re-scored exactly, of which the best k are kept.
    pub ef_search: usize,
}

impl AnnParams {
    /// Check what this build can read: hnsw, usearch, ip, f16, connectivity >= 2 and
    /// both ef >= 1.
    pub fn check(&self) -> Result<()> {
        let fixed = [("method", &self.method, "hnsw"), ("library", &self.library, "usearch")];
        let fixed = fixed.into_iter().chain([("metric", &self.metric, "ip"), ("vectors", &self.vectors, "f16")]);
        for (field, got, want) in fixed {
            if got != want {
                return format_err(format!("`ann.{field}` is {got:?}; this projroute reads {want:?}"));
            }
        }
        if self.connectivity < 2 || self.ef_construction == 0 || self.ef_search == 0 {
            return format_err(format!(
                "`ann` needs connectivity >= 2 and ef_construction, ef_search >= 1, got {}, {}, {}",
                self.connectivity, self.ef_construction, self.ef_search
            ));
        }
        Ok(())
    }
}

/// An approximate graph as stored: its parameters and `usearch`'s serialised bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct AnnGraph {
    /// The parameters, as in the header.
    pub params: AnnParams,
    /// `usearch`'s serialised index (graph and float16 vectors), keyed by answer position.
    pub bytes: Vec<u8>,
}

/// The JSON header of an index file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexHeader {
    /// Always `"projroute-index"`.
    pub format: String,
    /// Format version the file was written with.
    pub version: u32,
    /// Number of answers N.
    pub count: usize,
    /// Dimension D of the answer vectors.
    pub dim: usize,
    /// The static model folder that embeds queries for this index, if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
    /// The projroute model file that projects queries for this index, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The approximate graph's parameters, when the file holds one (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ann: Option<AnnParams>,
}

impl IndexHeader {
    fn from_json(text: &str) -> Result<Self> {
        let value = versioned_json(text, "index header", INDEX_FORMAT_NAME, INDEX_FORMAT_VERSION)?;
        let header: Self = serde_json::from_value(value).or_else(|e| format_err(format!("bad index header: {e}")))?;
        if let Some(ann) = &header.ann {
            ann.check()?;
        }
        Ok(header)
    }
}

/// Which projroute file a path holds, by its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A model file (config under `projroute`).
    Model,
    /// An answer index file (header under `projroute-index`).
    Index,
}

impl FileKind {
    /// `"model"` or `"index"`.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Model => "model",
            FileKind::Index => "index",
        }
    }
}

/// Whether the file at `path` is a projroute model or an answer index, reading only
/// its header; anything else is an [`Error::Format`]. Errors name the file.
pub fn file_kind(path: impl AsRef<Path>) -> Result<FileKind> {
    let path = path.as_ref();
    let metadata = read_header_metadata(path).map_err(|e| named(path, e))?;
    if metadata.contains_key(INDEX_FORMAT_NAME) {
        Ok(FileKind::Index)
    } else if metadata.contains_key(CONFIG_KEY) {
        Ok(FileKind::Model)
    } else {
        Err(named(path, Error::Format("neither a projroute model nor a projroute index".into())))
    }
}

/// The header of the index file at `path`, reading only the file's header.
pub fn read_index_header(path: impl AsRef<Path>) -> Result<IndexHeader> {
    let path = path.as_ref();
    let read = || match read_header_metadata(path)?.remove(INDEX_FORMAT_NAME) {
        Some(Value::String(text)) => IndexHeader::from_json(&text),
        Some(_) => format_err(format!("`{INDEX_FORMAT_NAME}` metadata entry is not a string")),
        None => format_err(format!("safetensors file has no `{INDEX_FORMAT_NAME}` header: not a projroute index")),
    };
    read().map_err(|e| named(path, e))
}

/// An answer index in memory: N answer vectors (N, D), one id and one text each.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerIndex {
    /// Answer vectors (N, D), as stored (not normalised).
    pub embeddings: Array2<f32>,
    /// One id per answer.
    pub ids: Vec<i64>,
    /// One text per answer.
    pub texts: Vec<String>,
    /// Query-side encoder folder recorded in the header, if any.
    pub encoder: Option<String>,
    /// Query-side model file recorded in the header, if any.
    pub model: Option<String>,
    /// The approximate (HNSW) graph over the answers, if built.
    pub ann: Option<AnnGraph>,
}

impl AnswerIndex {
    /// An index of `embeddings` (N, D) with `ids` and `texts` (N each); N >= 1, all
    /// values finite.
    pub fn new(embeddings: Array2<f32>, ids: Vec<i64>, texts: Vec<String>) -> Result<Self> {
        let n = embeddings.nrows();
        if n == 0 || embeddings.ncols() == 0 {
            return invalid(format!(
                "an index needs at least one answer of dimension >= 1, got {:?}",
                embeddings.dim()
            ));
        }
        if ids.len() != n || texts.len() != n {
            return invalid(format!("{n} answer vectors, {} ids and {} texts: all must match", ids.len(), texts.len()));
        }
        if let Some(i) = embeddings.rows().into_iter().position(|r| !r.iter().all(|v| v.is_finite())) {
            return invalid(format!("answer vector {i} contains NaN or infinite values"));
        }
        Ok(AnswerIndex { embeddings, ids, texts, encoder: None, model: None, ann: None })
    }

    /// Number of answers N.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there are no answers (never, as `new` rejects that).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Dimension D.
    pub fn dim(&self) -> usize {
        self.embeddings.ncols()
    }

    /// The header written for this index.
    pub fn header(&self) -> IndexHeader {
        IndexHeader {
            format: INDEX_FORMAT_NAME.into(),
            version: if self.ann.is_some() { INDEX_FORMAT_VERSION } else { 1 },
            count: self.len(),
            dim: self.dim(),
            encoder: self.encoder.clone(),
            model: self.model.clone(),
            ann: self.ann.as_ref().map(|g| g.params.clone()),
        }
    }

    /// Read an index file whole (its vectors are copied into the search index's
    /// normalised panels anyway, so it is read, not memory-mapped). Errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| named(path, e.into()))?;
        Self::from_bytes(&bytes).map_err(|e| named(path, e))
    }

    /// Parse an index file's bytes, checking header, dtypes, shapes and texts.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |e: safetensors::SafeTensorError| Error::Format(format!("not a readable safetensors file: {e}"));
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(bad)?;
        let text = meta.metadata().as_ref().and_then(|m| m.get(INDEX_FORMAT_NAME)).ok_or_else(|| {
            Error::Format(format!("safetensors file has no `{INDEX_FORMAT_NAME}` header: not a projroute index"))
        })?;
        let header = IndexHeader::from_json(text)?;
        let st = SafeTensors::deserialize(bytes).map_err(bad)?;
        let tensor = |name: &str, dtype: Dtype, shape: &[usize]| -> Result<TensorView<'_>> {
            let t = st.tensor(name).or_else(|_| format_err(format!("an index needs a tensor `{name}`")))?;
            if t.dtype() != dtype || t.shape() != shape {
                return format_err(format!(
                    "tensor `{name}` is {:?} {:?}, expected {dtype:?} {shape:?}",
                    t.dtype(),
                    t.shape()
                ));
            }
            Ok(t)
        };
        let (n, d) = (header.count, header.dim);
        let e = tensor(EMBEDDINGS, Dtype::F32, &[n, d])?;
        let values: Vec<f32> = e.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let embeddings = Array2::from_shape_vec((n, d), values).or_else(|e| format_err(e.to_string()))?;
        let ids = i64s(&tensor(IDS, Dtype::I64, &[n])?);
        let offsets = i64s(&tensor(TEXT_OFFSETS, Dtype::I64, &[n + 1])?);
        let blob = st.tensor(TEXTS).or_else(|_| format_err(format!("an index needs a tensor `{TEXTS}`")))?;
        if blob.dtype() != Dtype::U8 || blob.shape().len() != 1 {
            return format_err(format!("tensor `{TEXTS}` must be 1-D U8 (UTF-8 bytes)"));
        }
        let blob = blob.data();
        if offsets[0] != 0 || offsets[n] as usize != blob.len() || offsets.windows(2).any(|w| w[1] < w[0]) {
            return format_err(format!("`{TEXT_OFFSETS}` must rise from 0 to the length of `{TEXTS}`"));
        }
        let texts = offsets
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                String::from_utf8(blob[w[0] as usize..w[1] as usize].to_vec())
                    .or_else(|_| format_err(format!("text {i} is not valid UTF-8")))
            })
            .collect::<Result<Vec<_>>>()?;
        let ann = match (header.ann, st.tensor(ANN_GRAPH).ok()) {
            (None, None) => None,
            (Some(params), Some(graph)) if graph.dtype() == Dtype::U8 && graph.shape().len() == 1 => {
                Some(AnnGraph { params, bytes: graph.data().to_vec() })
            }
            (Some(_), Some(_)) => return format_err(format!("tensor `{ANN_GRAPH}` must be 1-D U8")),
            (Some(_), None) => return format_err(format!("the header has `ann` but there is no tensor `{ANN_GRAPH}`")),
            (None, Some(_)) => return format_err(format!("a tensor `{ANN_GRAPH}` but no `ann` in the header")),
        };
        let mut index = AnswerIndex::new(embeddings, ids, texts).map_err(|e| match e {
            Error::InvalidInput(m) => Error::Format(m),
            other => other,
        })?;
        index.encoder = header.encoder;
        index.model = header.model;
        index.ann = ann;
        Ok(index)
    }

    /// Serialise to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let e: Vec<u8> = self.embeddings.iter().flat_map(|v| v.to_le_bytes()).collect();
        let ids: Vec<u8> = self.ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut blob = Vec::new();
        let mut offsets = vec![0i64];
        for t in &self.texts {
            blob.extend_from_slice(t.as_bytes());
            offsets.push(blob.len() as i64);
        }
        let offsets: Vec<u8> = offsets.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = |dtype, shape: Vec<usize>, data| {
            TensorView::new(dtype, shape, data).or_else(|e| invalid(format!("cannot serialise the index: {e}")))
        };
        let mut views = vec![
            (EMBEDDINGS, view(Dtype::F32, vec![self.len(), self.dim()], &e)?),
            (IDS, view(Dtype::I64, vec![self.len()], &ids)?),
            (TEXTS, view(Dtype::U8, vec![blob.len()], &blob)?),
            (TEXT_OFFSETS, view(Dtype::I64, vec![self.len() + 1], &offsets)?),
        ];
        if let Some(graph) = &self.ann {
            views.push((ANN_GRAPH, view(Dtype::U8, vec![graph.bytes.len()], &graph.bytes)?));
        }
        let header = serde_json::to_string(&self.header()).expect("a header always serialises");
        let metadata = HashMap::from([(INDEX_FORMAT_NAME.to_string(), header)]);
        safetensors::serialize(views, Some(metadata)).or_else(|e| invalid(format!("cannot serialise the index: {e}")))
    }

    /// Write to `path` atomically (see [`crate::ModelFile::save`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        write_atomically(path, &self.to_bytes()?).map_err(|e| named(path, e.into()))
    }

    /// The answer vectors as a view.
    pub fn view(&self) -> ArrayView2<'_, f32> {
        self.embeddings.view()
    }
}

fn i64s(t: &TensorView<'_>) -> Vec<i64> {
    t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8-byte chunks"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn index() -> AnswerIndex {
        let mut index = AnswerIndex::new(
            array![[1.0f32, 0.0], [0.5, 0.5], [0.0, -2.0]],
            vec![10, -3, 7],
            vec!["first".into(), "".into(), "çà 日本 🎉".into()],
        )
        .unwrap();
        index.encoder = Some("/models/static".into());
        index
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("answers.index");
        let index = index();
        index.save(&path).unwrap();
        assert_eq!(AnswerIndex::open(&path).unwrap(), index);
        assert_eq!(read_index_header(&path).unwrap(), index.header());
        assert_eq!(file_kind(&path).unwrap(), FileKind::Index);
        assert!(crate::read_config(&path)
            .unwrap_err()
            .to_string()
            .contains("an answer index file (projroute-index), not a model"));
    }

    #[test]
    fn a_graph_round_trips_and_must_match_the_header() {
        let mut index = index();
        let params = AnnParams {
            method: "hnsw".into(),
            library: "usearch".into(),
            library_version: "2.26.6".into(),
            metric: "ip".into(),
            vectors: "f16".into(),
            connectivity: 8,
            ef_construction: 32,
            ef_search: 16,
        };
        index.ann = Some(AnnGraph { params: params.clone(), bytes: vec![1, 2, 3] });
        let bytes = index.to_bytes().unwrap();
        let back = AnswerIndex::from_bytes(&bytes).unwrap();
        assert_eq!(back, index);
        assert_eq!((back.header().version, back.header().ann), (2, Some(params.clone())));

        let mut other = params.clone();
        other.metric = "l2".into();
        index.ann = Some(AnnGraph { params: other, bytes: vec![1] });
        let err = AnswerIndex::from_bytes(&index.to_bytes().unwrap()).unwrap_err().to_string();
        assert!(err.contains("`ann.metric` is \"l2\""), "{err}");
        // A header without its graph, a graph without its header.
        let plain = self::index();
        let mut header = plain.header();
        header.ann = Some(params);
        let graph = [7u8; 4];
        let file = |header: &IndexHeader, with_graph: bool| {
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let mut views: Vec<(String, TensorView<'_>)> =
                st.tensors().into_iter().filter(|(name, _)| name != ANN_GRAPH).collect();
            if with_graph {
                views.push((ANN_GRAPH.into(), TensorView::new(Dtype::U8, vec![4], &graph[..]).unwrap()));
            }
            let meta = HashMap::from([(INDEX_FORMAT_NAME.to_string(), serde_json::to_string(header).unwrap())]);
            AnswerIndex::from_bytes(&safetensors::serialize(views, Some(meta)).unwrap())
        };
        assert!(file(&header, true).is_ok());
        let err = file(&header, false).unwrap_err().to_string();
        assert!(err.contains("no tensor `ann_graph`"), "{err}");
        let err = file(&plain.header(), true).unwrap_err().to_string();
        assert!(err.contains("no `ann` in the header"), "{err}");
    }

    /// A file written before approximate indexes (tests/fixtures/index_v1, commit
    /// 74630a5) reads the same and ranks its answers as it did then.
    #[test]
    fn an_exact_index_of_format_version_1_still_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/index_v1");
        let index = AnswerIndex::open(dir.join("answers.index")).unwrap();
        assert_eq!((index.len(), index.dim(), index.ann.is_none()), (40, 12, true));
        assert_eq!((index.ids[0], index.ids[39], index.texts[2].as_str()), (1000, 1117, "answer 2 · ünïcödé"));
        assert_eq!(read_index_header(dir.join("answers.index")).unwrap().version, 1);
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let rows = |key: &str| -> Vec<Vec<f64>> { serde_json::from_value(expected[key].clone()).unwrap() };
        let queries = rows("queries");
        let q = Array2::from_shape_fn((queries.len(), 12), |(i, j)| queries[i][j] as f32);
        let (ids, scores) = crate::FlatIndex::new(index.view()).unwrap().search(q.view(), 5).unwrap();
        for (i, (want_ids, want_scores)) in rows("ranked").iter().zip(rows("scores")).enumerate() {
            assert_eq!(ids.row(i).iter().map(|&v| v as f64).collect::<Vec<_>>(), *want_ids);
            assert!(scores.row(i).iter().zip(want_scores).all(|(a, b)| (*a as f64 - b).abs() < 1e-6));
        }
        // Written again by this code, it is still version 1 (older readers open it).
        assert_eq!(AnswerIndex::from_bytes(&index.to_bytes().unwrap()).unwrap().header().version, 1);
    }

    #[test]
    fn bad_inputs_and_files_are_errors() {
        assert!(AnswerIndex::new(Array2::zeros((0, 2)), vec![], vec![]).is_err());
        assert!(AnswerIndex::new(Array2::zeros((1, 2)), vec![1, 2], vec!["a".into()]).is_err());
        assert!(AnswerIndex::new(array![[f32::NAN]], vec![1], vec!["a".into()]).is_err());

        let bytes = index().to_bytes().unwrap();
        for cut in [0, 7, 30, bytes.len() - 1] {
            assert!(matches!(AnswerIndex::from_bytes(&bytes[..cut]), Err(Error::Format(_))), "cut {cut}");
        }
        let mut newer = bytes.clone();
        let key = br#"\"version\":1"#;
        let at = newer.windows(key.len()).position(|w| w == key).unwrap();
        newer[at + key.len() - 1] = b'9';
        assert!(matches!(AnswerIndex::from_bytes(&newer), Err(Error::UnsupportedVersion { .. })));
        let model = crate::format::ModelFile::from_parts(
            r#"{"format":"projroute","version":1,"kind":"global","dim_in":1,"dim_out":1}"#,
            Default::default(),
            Default::default(),
        )
        .unwrap();
        let err = AnswerIndex::from_bytes(&model.to_bytes().unwrap()).unwrap_err().to_string();
        assert!(err.contains("not a projroute index"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        model.save(&path).unwrap();
        assert_eq!(file_kind(&path).unwrap(), FileKind::Model);
        std::fs::write(&path, b"junk").unwrap();
        assert!(matches!(file_kind(&path), Err(Error::Format(_))));
        match AnswerIndex::open(dir.path().join("nope")) {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }
}
