//! [`Searcher`]: text in, answers out. Queries go through a [`StaticEncoder`], then
//! optionally a [`Projector`] of any keyless kind, then exact top-k cosine search over
//! an [`AnswerIndex`].

use std::path::{Path, PathBuf};

use ndarray::{Array2, Axis};

use crate::answer_index::AnswerIndex;
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

/// Text search over an answer index: static encoder, optional projection, exact
/// cosine top-k. `Send + Sync`: one searcher serves many threads.
#[derive(Debug)]
pub struct Searcher {
    encoder: StaticEncoder,
    projector: Option<Projector>,
    index: FlatIndex,
    ids: Vec<i64>,
    texts: Vec<String>,
}

impl Searcher {
    /// A searcher over `index` for queries embedded by `encoder` then, if given,
    /// projected by `projector` (a keyless kind whose `dim_in` is the encoder's
    /// dimension). The index's dimension must be the projector's `dim_out` (or the
    /// encoder's, without a projector), and no answer vector may be zero.
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
        let flat = FlatIndex::new(index.view())?;
        Ok(Searcher { encoder, projector, index: flat, ids: index.ids, texts: index.texts })
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

    /// Embed an answer corpus with `encoder` into an index (no projection: answers
    /// live in the encoder's space). `ids` default to the line numbers 0..N. A text
    /// with no known token (an all-zero vector) is an error naming it.
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
    /// the index). A query with no known token (a zero vector) gets no hits. `k` must
    /// be in 1..=N and `texts` non-empty.
    pub fn search(&self, texts: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        if k == 0 || k > self.len() {
            return invalid(format!("k must be between 1 and the index size ({}), got {k}", self.len()));
        }
        let x = self.embed(texts)?;
        let live: Vec<usize> = (0..x.nrows())
            .filter(|&i| x.row(i).iter().any(|&v| v != 0.0) && x.row(i).iter().all(|v| v.is_finite()))
            .collect();
        let mut out = vec![Vec::new(); texts.len()];
        if live.is_empty() {
            return Ok(out);
        }
        let (ids, scores) = self.index.search(x.select(Axis(0), &live).view(), k)?;
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
}
