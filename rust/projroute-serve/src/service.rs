//! [`Service`]: what a server serves, opened from a file: a model (vectors in), with
//! the answers stored in it if any, or an answer index (text in).

use std::path::Path;

use projroute::{file_kind, FileKind, FlatIndex, Projector, Searcher, INDEX_TENSOR};

/// Metadata key of the answer texts stored beside a model's index (a JSON list).
const INDEX_TEXTS: &str = "index.texts";

/// A model file: any kind; `POST /project`, and `POST /search` when it stores answers.
#[derive(Debug)]
pub struct ModelService {
    /// The model.
    pub projector: Projector,
    /// The answers stored in the file (`index.embeddings`), searched by cosine.
    pub answers: Option<Answers>,
}

/// A model's stored answers: their exact index and, if the file has them, their texts.
#[derive(Debug)]
pub struct Answers {
    /// Exact cosine search over the answer vectors (N, D_out).
    pub index: FlatIndex,
    /// One text per answer.
    pub texts: Option<Vec<String>>,
}

/// What a server serves.
#[derive(Debug)]
pub enum Service {
    /// A model file.
    Model(Box<ModelService>),
    /// An answer index with its static encoder (and model, if it records one):
    /// `POST /embed` and `POST /search`, text in.
    Index(Box<Searcher>),
}

impl Service {
    /// Open the model or index file at `path` (told apart by its header). For an index,
    /// `encoder` and `model` replace the encoder folder and model file it records;
    /// they are errors for a model file.
    pub fn open(path: &Path, encoder: Option<&Path>, model: Option<&Path>) -> projroute::Result<Self> {
        match file_kind(path)? {
            FileKind::Index => Ok(Service::Index(Box::new(Searcher::open_index(path, encoder, model)?))),
            FileKind::Model if encoder.is_some() || model.is_some() => Err(projroute::Error::InvalidInput(format!(
                "--encoder and --model apply to an index file; {} is a model file",
                path.display()
            ))),
            FileKind::Model => Ok(Service::Model(Box::new(ModelService::new(Projector::load(path)?)?))),
        }
    }

    /// The model kind (`None` for an index without a model).
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            Service::Model(m) => Some(m.projector.kind()),
            Service::Index(s) => s.projector().map(Projector::kind),
        }
    }

    /// Width of the vectors it returns from `/project` or `/embed`.
    pub fn dim_out(&self) -> usize {
        match self {
            Service::Model(m) => m.projector.dim_out(),
            Service::Index(s) => s.projector().map_or(s.encoder().dim(), Projector::dim_out),
        }
    }

    /// Number of answers `/search` searches (`None`: no `/search`).
    pub fn answers(&self) -> Option<usize> {
        match self {
            Service::Model(m) => m.answers.as_ref().map(|a| a.index.len()),
            Service::Index(s) => Some(s.len()),
        }
    }

    /// A one-line description, for the log.
    pub fn describe(&self) -> String {
        let answers = self.answers().map(|n| format!(", {n} answers")).unwrap_or_default();
        match self {
            Service::Model(m) => {
                let p = &m.projector;
                format!("`{}` model ({} -> {}{answers})", p.kind(), p.dim_in(), p.dim_out())
            }
            Service::Index(s) => {
                let model = s.projector().map(|p| format!(", `{}` model", p.kind())).unwrap_or_default();
                format!("index ({}-d static encoder{model}{answers})", s.encoder().dim())
            }
        }
    }
}

impl ModelService {
    /// Serve `projector`, with an exact index over the answers its file stores.
    pub fn new(projector: Projector) -> projroute::Result<Self> {
        let answers = match projector.index() {
            None => None,
            Some(t) => {
                let index = FlatIndex::new(t.view2(INDEX_TENSOR)?)?;
                let texts = match projector.metadata().get(INDEX_TEXTS) {
                    None => None,
                    Some(json) => {
                        let texts: Vec<String> = serde_json::from_str(json).map_err(|e| {
                            projroute::Error::Format(format!("metadata `{INDEX_TEXTS}` is not a list of strings: {e}"))
                        })?;
                        if texts.len() != index.len() {
                            return Err(projroute::Error::Format(format!(
                                "{} answer texts for {} answer vectors",
                                texts.len(),
                                index.len()
                            )));
                        }
                        Some(texts)
                    }
                };
                Some(Answers { index, texts })
            }
        };
        Ok(ModelService { projector, answers })
    }

    /// Whether the kind takes one key per query (`tree`, `hierarchical`).
    pub fn keyed(&self) -> bool {
        self.projector.resolve(&[]).is_ok()
    }

    /// Whether the kind routes by cosine, so that a query must not be (nearly) zero.
    pub fn routed(&self) -> bool {
        self.projector.n_clusters().is_some()
    }
}
