//! Python bindings of the projroute core: argument conversion, GIL release and error
//! mapping only; the work is done by the `projroute` crate.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use numpy::ndarray::{Array2, ArrayView2, ArrayViewD};
use numpy::{
    IntoPyArray, PyArray2, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArray2, PyReadonlyArrayDyn,
    PyUntypedArray, PyUntypedArrayMethods,
};
use projroute as core;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

create_exception!(projroute._core, ProjrouteError, PyException, "Base class of projroute's own errors.");
create_exception!(
    projroute._core,
    ModelFormatError,
    ProjrouteError,
    "A model file is foreign, truncated, inconsistent, or from a newer format version."
);

/// Run the core's work `f` with the GIL released, on the threads `set_num_threads`
/// gives (rayon's global pool by default).
fn detach<R: Send>(py: Python<'_>, f: impl FnOnce() -> R + Send) -> R {
    py.detach(|| core::threads::install(f))
}

/// Map a core error to the Python exception that fits it.
fn to_py_err(err: core::Error) -> PyErr {
    match err {
        core::Error::InvalidInput(msg) => PyValueError::new_err(msg),
        core::Error::Format(_) | core::Error::UnsupportedVersion { .. } => ModelFormatError::new_err(err.to_string()),
        core::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(io.to_string())
        }
        core::Error::Io(io) => PyOSError::new_err(io.to_string()),
        core::Error::Backend(msg) => ProjrouteError::new_err(msg),
    }
}

/// `obj` as a float32 array: float32 arrays of any layout are read in place, other
/// float arrays are converted, anything else is a `TypeError`.
fn as_f32_array<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let array = obj.cast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a numpy array, got {}",
            obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })?;
    if array.dtype().kind() != b'f' {
        return Err(PyTypeError::new_err(format!("{what} must have a floating dtype, got {}", array.dtype())));
    }
    let converted = if array.dtype().is_equiv_to(&numpy::dtype::<f32>(obj.py())) {
        obj.clone()
    } else {
        obj.call_method1("astype", ("float32",))?
    };
    Ok(converted.cast_into::<PyArrayDyn<f32>>()?)
}

/// `obj` as a 2-D float32 view (see [`as_f32_array`]); other ranks are a `ValueError`.
fn as_f32_matrix<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<PyReadonlyArray2<'py, f32>> {
    let array = as_f32_array(obj, what)?;
    if array.ndim() != 2 {
        return Err(PyValueError::new_err(format!(
            "{what} must be 2-D (n, dim), got shape {:?}; reshape a single vector with x[None, :]",
            array.shape()
        )));
    }
    Ok(array.cast_into::<PyArray2<f32>>()?.readonly())
}

/// `obj` as a list of str keys; a lone str or anything else than a sequence of str
/// is a `TypeError`.
fn as_keys(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let fail = || PyTypeError::new_err("keys must be a sequence of str (one tree id or path per query)");
    if obj.is_instance_of::<pyo3::types::PyString>() {
        return Err(fail());
    }
    obj.extract().map_err(|_| fail())
}

/// A loaded projroute model of any kind (global, federated, lda, tree, hierarchical,
/// transformer, transformer_ensemble, prle).
#[pyclass(module = "projroute._core", frozen)]
struct Projector {
    inner: core::Projector,
}

/// Numpy tensors (name -> float array) as float32 arrays: float32 arrays are read in
/// place, other float arrays converted; a non-float array is a `TypeError`.
fn readonly_tensors<'py>(
    tensors: HashMap<String, Bound<'py, PyAny>>,
) -> PyResult<Vec<(String, PyReadonlyArrayDyn<'py, f32>)>> {
    tensors
        .into_iter()
        .map(|(name, array)| {
            let array = as_f32_array(&array, &format!("tensor `{name}`"))?.readonly();
            Ok((name, array))
        })
        .collect()
}

/// Copies of `views` as core tensors (run with the GIL released).
fn core_tensors(views: Vec<(String, ArrayViewD<'_, f32>)>) -> BTreeMap<String, core::Tensor> {
    views.into_iter().map(|(name, v)| (name, core::Tensor::from_array(v))).collect()
}

/// Core tensors as float32 numpy arrays (copies).
fn tensors_to_numpy(
    py: Python<'_>,
    tensors: BTreeMap<String, core::Tensor>,
) -> PyResult<BTreeMap<String, Bound<'_, PyArrayDyn<f32>>>> {
    tensors
        .into_iter()
        .map(|(name, t)| {
            let array = numpy::ndarray::ArrayD::from_shape_vec(t.shape, t.data)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            Ok((name, array.into_pyarray(py)))
        })
        .collect()
}

#[pymethods]
impl Projector {
    /// Load a model file and validate it.
    ///
    /// Raises FileNotFoundError, or ModelFormatError for a foreign, truncated,
    /// inconsistent or newer file.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = detach(py, || core::Projector::load(&path)).map_err(to_py_err)?;
        Ok(Projector { inner })
    }

    /// Build a model from tensors (name -> float32 ndarray), a JSON config string and
    /// optional extra metadata strings; validated exactly as a file would be.
    #[staticmethod]
    #[pyo3(signature = (tensors, config, metadata=None))]
    fn from_tensors(
        py: Python<'_>,
        tensors: HashMap<String, Bound<'_, PyAny>>,
        config: &str,
        metadata: Option<BTreeMap<String, String>>,
    ) -> PyResult<Self> {
        // The config is checked before the tensors are converted, as a file's would be.
        core::Config::from_json(config).map_err(to_py_err)?;
        let arrays = readonly_tensors(tensors)?;
        let views = arrays.iter().map(|(n, a)| (n.clone(), a.as_array())).collect();
        let inner = detach(py, || {
            let tensors = core_tensors(views);
            let model = core::ModelFile::from_parts(config, tensors, metadata.unwrap_or_default())?;
            core::Projector::from_model(model)
        })
        .map_err(to_py_err)?;
        Ok(Projector { inner })
    }

    /// Write the model to a safetensors file: the tensors it was built from.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        detach(py, || self.inner.save(&path)).map_err(to_py_err)
    }

    /// Project queries `x` (B, dim_in) to (B, dim_out), float32. Keyed kinds (`tree`,
    /// `hierarchical`) need `keys`: one str per query, its tree id or its path `a/b/c`.
    #[pyo3(signature = (x, keys=None))]
    fn project<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        keys: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let x = as_f32_matrix(x, "queries")?;
        let view: ArrayView2<f32> = x.as_array();
        let out = match keys {
            None => detach(py, || self.inner.project(view)),
            Some(keys) => {
                let keys = as_keys(keys)?;
                detach(py, || self.inner.project_keyed(view, &keys.iter().map(String::as_str).collect::<Vec<_>>()))
            }
        };
        Ok(out.map_err(to_py_err)?.into_pyarray(py))
    }

    /// The key of the node that serves each of `keys` (keyed kinds only): the key
    /// itself, an ancestor path, or "" (the fallback map).
    fn resolve(&self, keys: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        // A keyless kind refuses before the keys are looked at.
        self.inner.resolve(&[]).map_err(to_py_err)?;
        let keys = as_keys(keys)?;
        self.inner.resolve(&keys.iter().map(String::as_str).collect::<Vec<_>>()).map_err(to_py_err)
    }

    /// Dense routing weights (B, K), float32; rows sum to 1. None for a global model.
    fn route<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyArray2<f32>>>> {
        let x = as_f32_matrix(x, "queries")?;
        let view: ArrayView2<f32> = x.as_array();
        let k = self.inner.n_clusters();
        let dense: Option<Array2<f32>> =
            detach(py, || self.inner.route(view).map(|r| r.map(|r| r.to_dense(k.expect("routed kinds have K")))))
                .map_err(to_py_err)?;
        Ok(dense.map(|d| d.into_pyarray(py)))
    }

    /// Model kind: "global", "federated", "lda", "tree", "hierarchical", "transformer",
    /// "transformer_ensemble" or "prle".
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    /// Input dimension.
    #[getter]
    fn dim_in(&self) -> usize {
        self.inner.dim_in()
    }

    /// Output dimension.
    #[getter]
    fn dim_out(&self) -> usize {
        self.inner.dim_out()
    }

    /// Number of clusters or heads (None for global).
    #[getter]
    fn n_clusters(&self) -> Option<usize> {
        self.inner.n_clusters()
    }

    /// The model's JSON config string.
    #[getter]
    fn config(&self) -> String {
        self.inner.config().to_json()
    }

    /// Extra metadata strings stored in the file.
    #[getter]
    fn metadata(&self) -> BTreeMap<String, String> {
        self.inner.metadata().clone()
    }

    /// The answer embeddings (N, dim_out) stored with the model for search, as a
    /// float32 copy, or None; unlike `tensors()` it exports nothing else.
    #[getter]
    fn index<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyArrayDyn<f32>>>> {
        let Some(index) = self.inner.index() else { return Ok(None) };
        let tensors = BTreeMap::from([(String::new(), index.clone())]);
        Ok(tensors_to_numpy(py, tensors)?.into_values().next())
    }

    /// The model's tensors as float32 arrays (copies): exactly those it was built from
    /// (a half-precision `W` as the widened values its file holds), index included.
    fn tensors<'py>(&self, py: Python<'py>) -> PyResult<BTreeMap<String, Bound<'py, PyArrayDyn<f32>>>> {
        let tensors = detach(py, || self.inner.tensors());
        tensors_to_numpy(py, tensors)
    }

    fn __repr__(&self) -> String {
        let k = self.inner.n_clusters().map(|k| format!(", n_clusters={k}")).unwrap_or_default();
        format!(
            "Projector(kind={:?}, dim_in={}, dim_out={}{k})",
            self.inner.kind(),
            self.inner.dim_in(),
            self.inner.dim_out()
        )
    }
}

/// Ids (B, k) int64 and scores (B, k) float32 of a search.
type SearchResult<'py> = (Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>);

/// Exact cosine search over the rows of an embedding matrix.
#[pyclass(module = "projroute._core", frozen)]
struct FlatIndex {
    inner: core::FlatIndex,
}

#[pymethods]
impl FlatIndex {
    /// Index `embeddings` (N, D); rows are normalised (a copy is kept).
    #[new]
    fn new(py: Python<'_>, embeddings: &Bound<'_, PyAny>) -> PyResult<Self> {
        let e = as_f32_matrix(embeddings, "embeddings")?;
        let view = e.as_array();
        let inner = detach(py, || core::FlatIndex::new(view)).map_err(to_py_err)?;
        Ok(FlatIndex { inner })
    }

    /// The `k` best items per query `x` (B, D): (ids int64 (B, k), scores float32 (B, k)).
    fn search<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>, k: usize) -> PyResult<SearchResult<'py>> {
        let x = as_f32_matrix(x, "queries")?;
        let view = x.as_array();
        let (ids, scores) = detach(py, || self.inner.search(view, k)).map_err(to_py_err)?;
        Ok((ids.mapv(i64::from).into_pyarray(py), scores.into_pyarray(py)))
    }

    /// Embedding dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!("FlatIndex(n={}, dim={})", self.inner.len(), self.inner.dim())
    }
}

/// `obj` as a list of str texts; a lone str or anything else than a sequence of str is
/// a `TypeError`.
fn as_texts(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let fail = || PyTypeError::new_err("texts must be a list of str");
    if obj.is_instance_of::<pyo3::types::PyString>() {
        return Err(fail());
    }
    obj.extract().map_err(|_| fail())
}

fn str_refs(texts: &[String]) -> Vec<&str> {
    texts.iter().map(String::as_str).collect()
}

/// A static (Model2Vec) text encoder: tokenise, look up, mean-pool, normalise, with
/// the semantics of `model2vec.StaticModel.encode`.
#[pyclass(module = "projroute._core", frozen)]
struct StaticEncoder {
    inner: core::StaticEncoder,
}

#[pymethods]
impl StaticEncoder {
    /// Load a model2vec folder (config.json, model.safetensors, tokenizer.json).
    ///
    /// Raises FileNotFoundError for a missing folder, ModelFormatError for a bad one.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = detach(py, || core::StaticEncoder::from_dir(&path)).map_err(to_py_err)?;
        Ok(StaticEncoder { inner })
    }

    /// Embed `texts` (a list of str): (n, dim) float32. An empty text gives the zero
    /// vector; an empty list is a ValueError.
    fn encode<'py>(&self, py: Python<'py>, texts: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let texts = as_texts(texts)?;
        let out = detach(py, || self.inner.encode(&str_refs(&texts))).map_err(to_py_err)?;
        Ok(out.into_pyarray(py))
    }

    /// The token ids each text is pooled over (after truncation, unknown tokens dropped).
    fn tokenize(&self, py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u32>>> {
        let texts = as_texts(texts)?;
        detach(py, || self.inner.tokenize(&str_refs(&texts))).map_err(to_py_err)
    }

    /// Embedding dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// Whether outputs are L2-normalised.
    #[getter]
    fn normalize(&self) -> bool {
        self.inner.normalize()
    }

    /// Most tokens per text, or None.
    #[getter]
    fn max_length(&self) -> Option<usize> {
        self.inner.max_length()
    }

    fn __repr__(&self) -> String {
        format!("StaticEncoder(dim={}, vocab_size={})", self.inner.dim(), self.inner.vocab_size())
    }
}

/// One search result: (id, score, text).
type PyHit = (i64, f32, String);

/// Text search: a static encoder, an optional projection, cosine top-k over an answer
/// index file (exact, or approximate when the file holds an HNSW graph).
#[pyclass(module = "projroute._core", frozen)]
struct Searcher {
    inner: core::Searcher,
}

#[pymethods]
impl Searcher {
    /// Open a static model folder, an optional model file and an index file.
    #[staticmethod]
    #[pyo3(signature = (encoder, model, index))]
    fn open(py: Python<'_>, encoder: PathBuf, model: Option<PathBuf>, index: PathBuf) -> PyResult<Self> {
        let inner = detach(py, || core::Searcher::open(&encoder, model.as_deref(), &index)).map_err(to_py_err)?;
        Ok(Searcher { inner })
    }

    /// Open an index file with the encoder folder and model file recorded in it;
    /// `encoder` and `model` replace them when given.
    #[staticmethod]
    #[pyo3(signature = (index, *, encoder=None, model=None))]
    fn open_index(py: Python<'_>, index: PathBuf, encoder: Option<PathBuf>, model: Option<PathBuf>) -> PyResult<Self> {
        let inner = detach(py, || core::Searcher::open_index(&index, encoder.as_deref(), model.as_deref()))
            .map_err(to_py_err)?;
        Ok(Searcher { inner })
    }

    /// The `k` best answers of each query in `texts`, as lists of (id, score, text),
    /// best first; a query with no known token gets an empty list. `exact` searches
    /// exactly over an approximate index; `ef` sets its graph candidates per query.
    #[pyo3(signature = (texts, k=10, *, exact=false, ef=None))]
    fn search(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        k: usize,
        exact: bool,
        ef: Option<usize>,
    ) -> PyResult<Vec<Vec<PyHit>>> {
        let texts = as_texts(texts)?;
        let options = core::SearchOptions { exact, ef };
        let hits = detach(py, || self.inner.search_with(&str_refs(&texts), k, options)).map_err(to_py_err)?;
        Ok(hits.into_iter().map(|row| row.into_iter().map(|h| (h.id, h.score, h.text)).collect()).collect())
    }

    /// Queries as searched (encoded, then projected): (n, D) float32.
    fn embed<'py>(&self, py: Python<'py>, texts: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let texts = as_texts(texts)?;
        let out = detach(py, || self.inner.embed(&str_refs(&texts))).map_err(to_py_err)?;
        Ok(out.into_pyarray(py))
    }

    /// Dense routing weights (n, K) float32 of the queries; None without a routed model.
    fn route<'py>(&self, py: Python<'py>, texts: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyArray2<f32>>>> {
        let texts = as_texts(texts)?;
        let k = self.inner.projector().and_then(|p| p.n_clusters());
        let dense = detach(py, || self.inner.route(&str_refs(&texts)).map(|r| r.zip(k).map(|(r, k)| r.to_dense(k))))
            .map_err(to_py_err)?;
        Ok(dense.map(|d| d.into_pyarray(py)))
    }

    /// The searcher's static encoder dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.encoder().dim()
    }

    /// The projecting model's kind, or None without a model.
    #[getter]
    fn kind(&self) -> Option<&'static str> {
        self.inner.projector().map(|p| p.kind())
    }

    /// The approximate graph's parameters (method, library, library_version, metric,
    /// vectors, connectivity, ef_construction, ef_search), or None when searches are exact.
    #[getter]
    fn ann<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(p) = self.inner.ann_params() else { return Ok(None) };
        let d = PyDict::new(py);
        for (key, value) in [
            ("method", &p.method),
            ("library", &p.library),
            ("library_version", &p.library_version),
            ("metric", &p.metric),
            ("vectors", &p.vectors),
        ] {
            d.set_item(key, value)?;
        }
        for (key, value) in
            [("connectivity", p.connectivity), ("ef_construction", p.ef_construction), ("ef_search", p.ef_search)]
        {
            d.set_item(key, value)?;
        }
        Ok(Some(d))
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        let model = self.inner.projector().map(|p| format!(", model={:?}", p.kind())).unwrap_or_default();
        format!("Searcher(n={}, dim={}{model})", self.inner.len(), self.inner.encoder().dim())
    }
}

/// HNSW parameters from `connectivity`, `ef_construction` and `ef_search` (each
/// optional, defaults 16, 128, 64).
fn ann_params(mut options: HashMap<String, usize>) -> core::Result<core::AnnParams> {
    let default = core::AnnParams::default();
    let (m, ef_c, ef_s) = (
        options.remove("connectivity").unwrap_or(default.connectivity),
        options.remove("ef_construction").unwrap_or(default.ef_construction),
        options.remove("ef_search").unwrap_or(default.ef_search),
    );
    if let Some(name) = options.keys().next() {
        return Err(core::Error::InvalidInput(format!(
            "unknown ann option {name:?}; the options are connectivity, ef_construction and ef_search"
        )));
    }
    core::AnnParams::new(m, ef_c, ef_s)
}

/// Write an answer index file: `embeddings` (N, D) float, `ids` (N int, default
/// 0..N), `texts` (N str), the encoder folder and model file recorded for
/// `Searcher.open_index`, and an approximate graph when `ann` (HNSW options) is given.
#[pyfunction]
#[pyo3(signature = (path, embeddings, texts, ids=None, encoder=None, model=None, ann=None))]
#[allow(clippy::too_many_arguments)]
fn save_index(
    py: Python<'_>,
    path: PathBuf,
    embeddings: &Bound<'_, PyAny>,
    texts: &Bound<'_, PyAny>,
    ids: Option<Vec<i64>>,
    encoder: Option<String>,
    model: Option<String>,
    ann: Option<HashMap<String, usize>>,
) -> PyResult<()> {
    let e = as_f32_matrix(embeddings, "embeddings")?;
    let texts = as_texts(texts)?;
    let view = e.as_array();
    detach(py, || {
        let n = view.nrows();
        let mut index = core::AnswerIndex::new(view.to_owned(), ids.unwrap_or_else(|| (0..n as i64).collect()), texts)?;
        index.encoder = encoder;
        index.model = model;
        if let Some(options) = ann {
            index.build_ann(&ann_params(options)?)?;
        }
        index.save(&path)
    })
    .map_err(to_py_err)
}

/// Embed `texts` with the static model folder `encoder` and write them as an answer
/// index file, recording `encoder` and `model` (not applied to answers) for
/// `Searcher.open_index`, with an approximate graph when `ann` (HNSW options) is given.
#[pyfunction]
#[pyo3(signature = (path, encoder, texts, ids=None, model=None, ann=None))]
fn build_index(
    py: Python<'_>,
    path: PathBuf,
    encoder: PathBuf,
    texts: &Bound<'_, PyAny>,
    ids: Option<Vec<i64>>,
    model: Option<String>,
    ann: Option<HashMap<String, usize>>,
) -> PyResult<usize> {
    let texts = as_texts(texts)?;
    detach(py, || {
        let enc = core::StaticEncoder::from_dir(&encoder)?;
        let mut index = core::Searcher::build_index(&enc, &str_refs(&texts), ids)?;
        index.encoder = Some(encoder.display().to_string());
        index.model = model;
        if let Some(options) = ann {
            index.build_ann(&ann_params(options)?)?;
        }
        index.save(&path)?;
        Ok(index.len())
    })
    .map_err(to_py_err)
}

/// The JSON header of an index file, reading only the file's header.
#[pyfunction]
fn read_index_header(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    let header = detach(py, || core::read_index_header(&path)).map_err(to_py_err)?;
    Ok(serde_json::to_string(&header).expect("a header serialises"))
}

/// "model" or "index": which projroute file `path` holds, reading only its header.
///
/// Raises FileNotFoundError, or ModelFormatError for any other file.
#[pyfunction]
fn file_kind(py: Python<'_>, path: PathBuf) -> PyResult<&'static str> {
    detach(py, || core::file_kind(&path)).map(core::FileKind::name).map_err(to_py_err)
}

/// Write a model file from tensors (name -> float ndarray), a JSON config string and
/// optional extra metadata strings, serialising once; no model is built. The tensors
/// are copied, encoded and written with the GIL released.
///
/// The config is checked (format, version, schema), every tensor must be a finite float
/// array, `W` is stored at the config's `weights_dtype`, and an index tensor
/// `index.embeddings` must have `dim_out` columns. Raises TypeError for a non-float
/// array, ModelFormatError for a bad config or tensor, OSError if the file cannot be
/// written.
#[pyfunction]
#[pyo3(signature = (tensors, config, path, metadata=None))]
fn save_file(
    py: Python<'_>,
    tensors: HashMap<String, Bound<'_, PyAny>>,
    config: &str,
    path: PathBuf,
    metadata: Option<BTreeMap<String, String>>,
) -> PyResult<()> {
    core::Config::from_json(config).map_err(to_py_err)?;
    let arrays = readonly_tensors(tensors)?;
    let views = arrays.iter().map(|(n, a)| (n.clone(), a.as_array())).collect();
    detach(py, || core::save_file(config, core_tensors(views), metadata.unwrap_or_default(), &path)).map_err(to_py_err)
}

/// The JSON config string of the model file at `path`, reading only its header.
///
/// Raises FileNotFoundError, or ModelFormatError for a foreign, truncated or newer file.
#[pyfunction]
fn read_config(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    let config = detach(py, || core::read_config(&path)).map_err(to_py_err)?;
    Ok(config.to_json())
}

/// Use `n` threads for each call into the core from now on, on each calling Python
/// thread (its own pool of `n`); `n = 0` restores the default: `RAYON_NUM_THREADS`, or
/// one thread per core, shared by all callers.
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    core::threads::set_num_threads(n).map_err(to_py_err)
}

/// Threads a call into the core uses (see `set_num_threads`).
#[pyfunction]
fn get_num_threads() -> usize {
    core::threads::num_threads()
}

/// The CPU's model, the SIMD features it has and the path the core's packed GEMM
/// kernel takes on it (`"avx2+fma+f16c"` or `"portable"`), so that a figure names its
/// machine.
#[pyfunction]
fn kernel_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("cpu_model", core::cpu::cpu_model())?;
    d.set_item("kernel", core::cpu::kernel_path())?;
    d.set_item("features", core::cpu::cpu_features())?;
    Ok(d)
}

/// Run `projroute serve` with the command line `argv` (its first item is the program
/// name used in messages; see `projroute serve --help`): serve a model or index file
/// over HTTP until SIGINT or SIGTERM, with the GIL released, and return the exit
/// status (0 after a clean shutdown or `--help`, 2 for a usage or start-up error, 1 if
/// serving failed). Messages go to the process's stdout and stderr.
#[pyfunction]
fn serve(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| projroute_serve::main(argv))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Projector>()?;
    m.add_function(wrap_pyfunction!(save_file, m)?)?;
    m.add_function(wrap_pyfunction!(read_config, m)?)?;
    m.add_class::<FlatIndex>()?;
    m.add_class::<StaticEncoder>()?;
    m.add_class::<Searcher>()?;
    m.add_function(wrap_pyfunction!(save_index, m)?)?;
    m.add_function(wrap_pyfunction!(build_index, m)?)?;
    m.add_function(wrap_pyfunction!(read_index_header, m)?)?;
    m.add_function(wrap_pyfunction!(file_kind, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_info, m)?)?;
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    m.add("ProjrouteError", m.py().get_type::<ProjrouteError>())?;
    m.add("ModelFormatError", m.py().get_type::<ModelFormatError>())?;
    m.add("FORMAT_VERSION", core::FORMAT_VERSION)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
