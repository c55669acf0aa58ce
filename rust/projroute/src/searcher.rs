//! [`Searcher`]: text in, answers out. Queries go through a [`StaticEncoder`], then
//! optionally a [`Projector`] of any keyless kind, then top-k cosine search over an
//! [`AnswerIndex`]: exact, or approximate when the index holds an HNSW graph (feature
//! `ann`).

use std::path::{Path, PathBuf};
#[cfg(feature = "ann")]
use std::sync::OnceLock;

use ndarray::{Array2, ArrayView2, Axis};

#[cfg(feature = "ann")]
use crate::ann::AnnIndex;
use crate::answer_index::{AnnParams, AnswerIndex};
use crate::error::{invalid, Result};
use crate::routing::Routing;
use crate::{FlatIndex, Projector, StaticEncoder};

/// One search result.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// The answer's id, as stored in the index.
    pub id: i64,
    /// Cosine similarity between the (projected) query and the answer.
    pub score: f32,
    /// The answer's text.
    pub text: String,
}

/// How [`Searcher::search_with`] searches; the default is what the index was built for
/// (approximate over an index with a graph, else exact).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SearchOptions {
    /// Search exactly even when the index has an approximate graph (to measure recall).
    pub exact: bool,
    /// Graph candidates per query (HNSW's ef; at least k are taken), instead of the
    /// index's `ef_search`. Approximate search only.
    pub ef: Option<usize>,
}

/// The answers' vectors as searched.
#[derive(Debug)]
enum Answers {
    Exact(FlatIndex),
    /// A graph, and the exact index, built on first use.
    #[cfg(feature = "ann")]
    Approximate {
        ann: Box<AnnIndex>,
        exact: OnceLock<FlatIndex>,
    },
}

/// Text search over an answer index: static encoder, optional projection, cosine
/// top-k. `Send + Sync`: one searcher serves many threads.
#[derive(Debug)]
pub struct Searcher {
    encoder: StaticEncoder,
    projector: Option<Projector>,
    answers: Answers,
    ids: Vec<i64>,
    texts: Vec<String>,
}

impl Searcher {
    /// A searcher over `index` for queries embedded by `encoder` then, if given,
    /// projected by `projector` (a keyless kind whose `dim_in` is the encoder's
    /// dimension). The index's dimension must be the projector's `dim_out` (or the
    /// encoder's, without a projector), and no answer vector may be zero. An index with
    /// an approximate graph is searched through it (with feature `ann`; without it,
    /// exactly).
    pub fn new(encoder: StaticEncoder, projector: Option<Projector>, index: AnswerIndex) -> Result<Self> {
        let mut query_dim = encoder.dim();
        if let Some(p) = &projector {
            if p.resolve(&[]).is_ok() {
                return invalid(format!(
                    "a `{}` model needs a key per query; a Searcher takes keyless kinds",
                    p.kind()
                ));
            }
            if p.dim_in() != encoder.dim() {
                return invalid(format!(
                    "the encoder gives {}-d vectors but the `{}` model takes {}-d ones",
                    encoder.dim(),
                    p.kind(),
                    p.dim_in()
                ));
            }
            query_dim = p.dim_out();
        }
        if index.dim() != query_dim {
            return invalid(format!("queries are {query_dim}-d but the index holds {}-d answers", index.dim()));
        }
        let answers = match &index.ann {
            #[cfg(feature = "ann")]
            Some(graph) => {
                Answers::Approximate { ann: Box::new(AnnIndex::load(graph, index.view())?), exact: OnceLock::new() }
            }
            _ => Answers::Exact(FlatIndex::new(index.view())?),
        };
        Ok(Searcher { encoder, projector, answers, ids: index.ids, texts: index.texts })
    }

    /// Open a static model folder, an optional model file and an index file.
    pub fn open(encoder_dir: impl AsRef<Path>, model: Option<&Path>, index: impl AsRef<Path>) -> Result<Self> {
        let encoder = StaticEncoder::from_dir(encoder_dir)?;
        let projector = model.map(Projector::load).transpose()?;
        Self::new(encoder, projector, AnswerIndex::open(index)?)
    }

    /// Open an index file with the encoder folder and model file recorded in its
    /// header (relative paths are taken from the index file's folder); `encoder` or
    /// `model` replace them when given.
    pub fn open_index(index: impl AsRef<Path>, encoder: Option<&Path>, model: Option<&Path>) -> Result<Self> {
        let path = index.as_ref();
        let index = AnswerIndex::open(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let recorded = |p: &Option<String>| p.as_ref().map(|p| base.join(p));
        let encoder_dir: PathBuf = match (encoder, recorded(&index.encoder)) {
            (Some(e), _) => e.to_path_buf(),
            (None, Some(e)) => e,
            (None, None) => {
                return invalid(format!("{} records no encoder folder; pass one", path.display()));
            }
        };
        let model: Option<PathBuf> = model.map(Path::to_path_buf).or_else(|| recorded(&index.model));
        let encoder = StaticEncoder::from_dir(encoder_dir)?;
        let projector = model.as_deref().map(Projector::load).transpose()?;
        Self::new(encoder, projector, index)
    }

    /// Embed an answer corpus with `encoder` into an (exact) index (no projection:
    /// answers live in the encoder's space). `ids` default to the line numbers 0..N. A
    /// text with no known token (an all-zero vector) is an error naming it. Add a graph
    /// with [`AnswerIndex::build_ann`].
    pub fn build_index(encoder: &StaticEncoder, texts: &[&str], ids: Option<Vec<i64>>) -> Result<AnswerIndex> {
        let embeddings = encoder.encode(texts)?;
        if let Some(i) = embeddings.axis_iter(Axis(0)).position(|r| r.iter().all(|&v| v == 0.0)) {
            return invalid(format!("answer {i} ({:?}) has no known token; its vector is zero", texts[i]));
        }
        let ids = ids.unwrap_or_else(|| (0..texts.len() as i64).collect());
        AnswerIndex::new(embeddings, ids, texts.iter().map(|t| t.to_string()).collect())
    }

    /// The static encoder.
    pub fn encoder(&self) -> &StaticEncoder {
        &self.encoder
    }

    /// The projector, if any.
    pub fn projector(&self) -> Option<&Projector> {
        self.projector.as_ref()
    }

    /// Number of answers.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there are no answers (never: an index holds at least one).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The approximate graph's parameters, when searches go through one.
    pub fn ann_params(&self) -> Option<&AnnParams> {
        match &self.answers {
            Answers::Exact(_) => None,
            #[cfg(feature = "ann")]
            Answers::Approximate { ann, .. } => Some(ann.params()),
        }
    }

    /// Queries as searched: encoded, then projected, (B, D).
    pub fn embed(&self, texts: &[&str]) -> Result<Array2<f32>> {
        let x = self.encoder.encode(texts)?;
        match &self.projector {
            Some(p) => p.project(x.view()),
            None => Ok(x),
        }
    }

    /// Routing weights of the encoded queries under the projector; `None` without a
    /// projector or for unrouted kinds.
    pub fn route(&self, texts: &[&str]) -> Result<Option<Routing>> {
        match &self.projector {
            Some(p) => p.route(self.encoder.encode(texts)?.view()),
            None => {
                self.encoder.encode(texts)?;
                Ok(None)
            }
        }
    }

    /// The `k` best answers of each query, best first (ties to the lower position in
    /// the index): exact, or approximate over an index with a graph. A query with no
    /// known token (a zero vector) gets no hits. `k` must be in 1..=N and `texts`
    /// non-empty.
    pub fn search(&self, texts: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        self.search_with(texts, k, SearchOptions::default())
    }

    /// [`Searcher::search`] with options: exact search over an approximate index, or
    /// another candidate count `ef`.
    pub fn search_with(&self, texts: &[&str], k: usize, options: SearchOptions) -> Result<Vec<Vec<Hit>>> {
        if k == 0 || k > self.len() {
            return invalid(format!("k must be between 1 and the index size ({}), got {k}", self.len()));
        }
        if options.ef.is_some() && (options.exact || self.ann_params().is_none()) {
            return invalid("ef applies to approximate search; this search is exact");
        }
        let x = self.embed(texts)?;
        let live: Vec<usize> = (0..x.nrows())
            .filter(|&i| x.row(i).iter().any(|&v| v != 0.0) && x.row(i).iter().all(|v| v.is_finite()))
            .collect();
        let mut out = vec![Vec::new(); texts.len()];
        if live.is_empty() {
            return Ok(out);
        }
        let (ids, scores) = self.top_k(x.select(Axis(0), &live).view(), k, options)?;
        for (row, &q) in live.iter().enumerate() {
            out[q] = ids
                .row(row)
                .iter()
                .zip(scores.row(row))
                .map(|(&i, &score)| Hit { id: self.ids[i as usize], score, text: self.texts[i as usize].clone() })
                .collect();
        }
        Ok(out)
    }

    fn top_k(&self, x: ArrayView2<f32>, k: usize, options: SearchOptions) -> Result<(Array2<u32>, Array2<f32>)> {
        #[cfg(not(feature = "ann"))]
        let _ = options; // without the graph every search is exact
        match &self.answers {
            Answers::Exact(flat) => flat.search(x, k),
            #[cfg(feature = "ann")]
            Answers::Approximate { ann, .. } if !options.exact => ann.search(x, k, options.ef),
            #[cfg(feature = "ann")]
            Answers::Approximate { ann, exact } => match exact.get() {
                Some(flat) => flat.search(x, k),
                None => {
                    let flat = FlatIndex::new(ann.unit())?;
                    exact.get_or_init(|| flat).search(x, k)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::static_encoder::tests::{f32s, write_model};
    use safetensors::tensor::Dtype;

    /// Words [UNK], a, bb, ccc with vectors -, (1, 0), (0, 1), (1, 1).
    fn encoder(dir: &Path) -> StaticEncoder {
        let table = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        write_model(dir, r#"{"normalize": true}"#, vec![("embeddings", Dtype::F32, f32s(&table), vec![4, 2])]);
        StaticEncoder::from_dir(dir).unwrap()
    }

    #[test]
    fn builds_saves_and_searches() {
        let dir = tempfile::tempdir().unwrap();
        let enc = encoder(dir.path());
        let mut index = Searcher::build_index(&enc, &["a", "bb", "a ccc"], Some(vec![7, 8, 9])).unwrap();
        index.encoder = Some(".".into());
        let path = dir.path().join("x.index");
        index.save(&path).unwrap();
        let s = Searcher::open_index(&path, None, None).unwrap();
        assert_eq!(s.len(), 3);
        let hits = s.search(&["bb", "zz", "a"], 2).unwrap();
        assert_eq!(hits[0][0], Hit { id: 8, score: 1.0, text: "bb".into() });
        assert_eq!(hits[0][1].id, 9);
        assert!(hits[1].is_empty()); // no known token
        assert_eq!(hits[2][0].id, 7);
        assert!(hits[2][0].score >= hits[2][1].score);
        assert_eq!(s.route(&["a"]).unwrap(), None);
        assert!(s.search(&["a"], 4).is_err() && s.search(&["a"], 0).is_err() && s.search(&[], 1).is_err());
        assert!(Searcher::build_index(&enc, &["a", "zz"], None).unwrap_err().to_string().contains("answer 1"));
    }

    #[test]
    fn ef_is_for_approximate_search_only() {
        let dir = tempfile::tempdir().unwrap();
        let enc = encoder(dir.path());
        let s = Searcher::new(enc.clone(), None, Searcher::build_index(&enc, &["a", "bb"], None).unwrap()).unwrap();
        assert_eq!(s.ann_params(), None);
        let ef = SearchOptions { exact: false, ef: Some(8) };
        assert!(s.search_with(&["a"], 1, ef).unwrap_err().to_string().contains("ef applies to approximate search"));
        assert_eq!(
            s.search_with(&["a"], 1, SearchOptions { exact: true, ef: None }).unwrap(),
            s.search(&["a"], 1).unwrap()
        );
    }

    #[cfg(feature = "ann")]
    #[test]
    fn an_approximate_index_round_trips_and_still_searches_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let enc = encoder(dir.path());
        let texts = ["a", "bb", "a ccc", "bb ccc", "a bb", "ccc"];
        let mut index = Searcher::build_index(&enc, &texts, None).unwrap();
        index.build_ann(&AnnParams::new(4, 16, 8).unwrap()).unwrap();
        index.encoder = Some(".".into());
        let path = dir.path().join("x.index");
        index.save(&path).unwrap();
        let s = Searcher::open_index(&path, None, None).unwrap();
        assert_eq!(s.ann_params().map(|p| (p.connectivity, p.ef_search)), Some((4, 8)));
        let exact = SearchOptions { exact: true, ef: None };
        let queries = ["a", "bb ccc", "ccc a a", "zz"];
        // Six answers: the graph finds them all, with the exact scores.
        assert_eq!(s.search(&queries, 6).unwrap(), s.search_with(&queries, 6, exact).unwrap());
        let wide = SearchOptions { exact: false, ef: Some(32) };
        assert_eq!(s.search_with(&queries, 3, wide).unwrap(), s.search_with(&queries, 3, exact).unwrap());
        let both = SearchOptions { exact: true, ef: Some(32) };
        assert!(s.search_with(&queries, 3, both).is_err());
        assert!(s.search_with(&queries, 3, SearchOptions { exact: false, ef: Some(0) }).is_err());
        assert!(s.search(&queries, 7).is_err() && s.search(&queries, 0).is_err() && s.search(&[], 1).is_err());
    }

    #[test]
    fn models_must_fit_the_encoder_and_index() {
        let dir = tempfile::tempdir().unwrap();
        let enc = encoder(dir.path());
        let index = Searcher::build_index(&enc, &["a", "bb"], None).unwrap();
        let model = |kind: &str, d_out: usize, extra: &str| {
            let config =
                format!(r#"{{"format":"projroute","version":1,"kind":"{kind}","dim_in":2,"dim_out":{d_out}{extra}}}"#);
            let m = if kind == "tree" { 2 } else { 1 };
            let shape = if kind == "tree" { vec![m, 2, d_out] } else { vec![2, d_out] };
            let w = crate::Tensor::new(shape, vec![1.0; m * 2 * d_out]).unwrap();
            let file = crate::ModelFile::from_parts(&config, [("W".to_string(), w)].into(), Default::default());
            Projector::from_model(file.unwrap()).unwrap()
        };
        let err = Searcher::new(enc.clone(), Some(model("global", 3, "")), index.clone()).unwrap_err();
        assert!(err.to_string().contains("queries are 3-d but the index holds 2-d"), "{err}");
        let err = Searcher::new(enc.clone(), Some(model("tree", 2, r#","nodes":["","a"]"#)), index.clone());
        assert!(err.unwrap_err().to_string().contains("needs a key per query"));
        let s = Searcher::new(enc, Some(model("global", 2, "")), index).unwrap();
        assert_eq!(s.embed(&["a"]).unwrap().row(0).to_vec(), vec![1.0, 1.0]);
    }
}
