//! [`StaticEncoder`]: text to embeddings with a static (Model2Vec) model: tokenise,
//! look up one vector per token, mean-pool, optionally normalise. The semantics are
//! those of Python `model2vec.StaticModel.encode` (version 0.10), step by step.

use std::cell::RefCell;
use std::path::Path;
use std::str::FromStr;

use ndarray::{Array2, ArrayViewMut1, Axis};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::Value;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{format_err, invalid, Error, Result};
use crate::fastmath;
use crate::format::named;
use crate::wordpiece::{self, WordPiece};

/// model2vec's default `max_length` (in tokens) when `config.json` has none.
const DEFAULT_MAX_LENGTH: usize = 512;

/// Smaller batches are encoded on the calling thread: a text takes a few
/// microseconds, about what handing work to rayon's threads costs.
const PARALLEL_MIN_TEXTS: usize = 8;

/// A static embedding model loaded from a model2vec folder (`config.json`,
/// `model.safetensors`, `tokenizer.json`), as written by
/// `model2vec.StaticModel.save_pretrained` or `projroute.static.distill_vocab`.
///
/// [`encode`](Self::encode) gives what `StaticModel.from_pretrained(dir).encode(texts)`
/// gives, within float rounding:
/// 1. each text is cut to `max_length * median_token_length` characters, where the
///    median is over the character lengths of the vocabulary's tokens (added tokens
///    included);
/// 2. it is tokenised without special tokens, truncated to `max_length` tokens;
/// 3. the unknown token (the model's `unk_token`, or a Unigram model's `unk_id`) is
///    dropped;
/// 4. the rows of the table (through `mapping`, if the file has one), each scaled by
///    its token's `weights` entry if the file has them, are averaged; no token gives
///    the zero vector;
/// 5. rows are L2-normalised when `config.json` says `"normalize": true` (a zero row
///    stays zero).
///
/// `max_length: null` in `config.json` turns steps 1 and 2 off. A float16 table gives
/// float16-rounded outputs, as model2vec's float16 output does.
///
/// A plain BERT WordPiece `tokenizer.json` (BertNormalizer, BertPreTokenizer, WordPiece)
/// is run by the crate's own tokenizer, which gives HF's ids faster and stops at
/// `max_length` tokens; any other goes through HF `tokenizers`.
#[derive(Clone, Debug)]
pub struct StaticEncoder {
    tokenizer: Tokenizer,
    /// The fast path for `tokenizer`, when it is a plain BERT WordPiece one.
    wordpiece: Option<WordPiece>,
    /// (rows, dim), widened to f32.
    table: Array2<f32>,
    /// Per-token weights, indexed by token id.
    weights: Option<Vec<f32>>,
    /// Token id to table row (vocabulary quantisation).
    mapping: Option<Vec<usize>>,
    normalize: bool,
    max_length: Option<usize>,
    median_token_length: usize,
    unk_id: Option<u32>,
    /// The table is float16: outputs are rounded to float16 as model2vec's are.
    half_output: bool,
}

impl StaticEncoder {
    /// Load a model2vec folder. A missing folder is an [`Error::Io`] (NotFound); a
    /// folder without the three files, or with a bad one, is an [`Error::Format`].
    /// Errors name the folder or file.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            let kind = if dir.exists() { std::io::ErrorKind::InvalidInput } else { std::io::ErrorKind::NotFound };
            let why = if dir.exists() { "not a directory" } else { "no such static model folder" };
            return Err(Error::Io(std::io::Error::new(kind, format!("{}: {why}", dir.display()))));
        }
        let file = |name: &str| -> Result<Vec<u8>> {
            let path = dir.join(name);
            if !path.is_file() {
                return format_err(format!(
                    "{}: not a static model folder (no {name}; expected config.json, model.safetensors and \
                     tokenizer.json)",
                    dir.display()
                ));
            }
            std::fs::read(&path).map_err(|e| named(&path, e.into()))
        };
        let config = file("config.json")?;
        let tokenizer = file("tokenizer.json")?;
        let tensors = file("model.safetensors")?;
        let named_err = |name: &str, e: Error| named(&dir.join(name), e);
        let (normalize, max_length) = parse_config(&config).map_err(|e| named_err("config.json", e))?;
        let (tokenizer, unk_id) =
            parse_tokenizer(&tokenizer, max_length).map_err(|e| named_err("tokenizer.json", e))?;
        let mut vocab: Vec<(String, u32)> = tokenizer.get_vocab(true).into_iter().collect();
        vocab.sort_by_key(|(_, id)| *id);
        let n_tokens = vocab.len();
        let median_token_length = median(vocab.iter().map(|(t, _)| t.chars().count()).collect());
        let tables = read_tables(&tensors, n_tokens).map_err(|e| named_err("model.safetensors", e))?;
        Ok(StaticEncoder {
            wordpiece: WordPiece::from_tokenizer(&tokenizer),
            tokenizer,
            table: tables.table,
            weights: tables.weights,
            mapping: tables.mapping,
            normalize,
            max_length,
            median_token_length,
            unk_id,
            half_output: tables.half,
        })
    }

    /// Embedding dimension d.
    pub fn dim(&self) -> usize {
        self.table.ncols()
    }

    /// Number of tokens in the vocabulary (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Whether outputs are L2-normalised (`normalize` in `config.json`).
    pub fn normalize(&self) -> bool {
        self.normalize
    }

    /// Most tokens per text (`max_length` in `config.json`, default 512); `None`: no
    /// truncation.
    pub fn max_length(&self) -> Option<usize> {
        self.max_length
    }

    /// The token ids each text is pooled over (steps 1 to 3 of the type's doc).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts
            .par_iter()
            .map(|text| {
                Scratch::with(|scratch| {
                    self.token_ids(text, scratch)?;
                    Ok(scratch.ids.clone())
                })
            })
            .collect()
    }

    /// Embed `texts`: (n, d) float32, one row per text (see the type's doc). An empty
    /// list is an [`Error::InvalidInput`]; an empty text gives the zero vector.
    pub fn encode(&self, texts: &[&str]) -> Result<Array2<f32>> {
        if texts.is_empty() {
            return invalid("no texts to encode (an empty list)");
        }
        let mut out = Array2::<f32>::zeros((texts.len(), self.dim()));
        let embed = |(row, text): (ArrayViewMut1<f32>, &&str)| {
            Scratch::with(|scratch| {
                self.token_ids(text, scratch)?;
                self.pool(&scratch.ids, row)
            })
        };
        if texts.len() < PARALLEL_MIN_TEXTS {
            out.axis_iter_mut(Axis(0)).zip(texts).try_for_each(embed)?;
        } else {
            out.axis_iter_mut(Axis(0)).into_par_iter().zip(texts.par_iter()).try_for_each(embed)?;
        }
        Ok(out)
    }

    /// The ids of `text` into `scratch.ids`: steps 1 to 3 of the type's doc.
    fn token_ids(&self, text: &str, scratch: &mut Scratch) -> Result<()> {
        let text = match self.max_length {
            Some(n) => {
                let chars = n.saturating_mul(self.median_token_length);
                // A text of at most `chars` bytes has at most `chars` characters.
                if text.len() <= chars {
                    text
                } else {
                    text.char_indices().nth(chars).map_or(text, |(i, _)| &text[..i])
                }
            }
            None => text,
        };
        let ids = &mut scratch.ids;
        match &self.wordpiece {
            Some(wp) => wp.tokenize(text, self.max_length.unwrap_or(usize::MAX), &mut scratch.wordpiece, ids),
            None => {
                let encoding = self
                    .tokenizer
                    .encode_fast(text, false)
                    .map_err(|e| Error::Backend(format!("tokenizer failed on a text: {e}")))?;
                ids.clear();
                ids.extend_from_slice(encoding.get_ids());
            }
        }
        if let Some(unk) = self.unk_id {
            ids.retain(|&id| id != unk);
        }
        Ok(())
    }

    /// Mean of the (weighted) rows of `ids` into `out`, then the normalisation.
    fn pool(&self, ids: &[u32], mut out: ArrayViewMut1<f32>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let acc = out.as_slice_mut().expect("rows of a fresh array are contiguous");
        // Four rows at a time, summed in order as numpy's mean does.
        let mut quads = ids.chunks_exact(4);
        for quad in &mut quads {
            let [(a, wa), (b, wb), (c, wc), (d, wd)] = [
                self.weighted_row(quad[0])?,
                self.weighted_row(quad[1])?,
                self.weighted_row(quad[2])?,
                self.weighted_row(quad[3])?,
            ];
            fastmath::add_weighted_rows4(acc, [a, b, c, d], [wa, wb, wc, wd]);
        }
        for &id in quads.remainder() {
            let (row, w) = self.weighted_row(id)?;
            fastmath::add_weighted_row(acc, row, w);
        }
        // Divisions (not reciprocal products), in float32 as numpy's: a float16 table's
        // outputs are rounded to float16 next, which would show a last-bit difference.
        let n = ids.len() as f32;
        acc.iter_mut().for_each(|a| *a /= n);
        if self.half_output {
            acc.iter_mut().for_each(|a| *a = half::f16::from_f32(*a).to_f32());
        }
        if self.normalize {
            let norm = sum_of_squares(acc).sqrt() as f32 + 1e-32;
            acc.iter_mut().for_each(|a| *a /= norm);
            if self.half_output {
                acc.iter_mut().for_each(|a| *a = half::f16::from_f32(*a).to_f32());
            }
        }
        Ok(())
    }

    /// The table row of token `id` and its weight (1 without weights).
    #[inline]
    fn weighted_row(&self, id: u32) -> Result<(&[f32], f32)> {
        let id = id as usize;
        let r = match &self.mapping {
            Some(m) => *m.get(id).ok_or_else(|| token_out_of_range(id))?,
            None => id,
        };
        let dim = self.table.ncols();
        let table = self.table.as_slice().expect("the table is built in standard layout");
        let row = table.get(r * dim..(r + 1) * dim).ok_or_else(|| token_out_of_range(id))?;
        let w = match &self.weights {
            Some(w) => *w.get(id).ok_or_else(|| token_out_of_range(id))?,
            None => 1.0,
        };
        Ok((row, w))
    }
}

/// The sum of the squares of `v`, in float64, in four interleaved partial sums (so
/// that it vectorises).
fn sum_of_squares(v: &[f32]) -> f64 {
    let mut lanes = [0f64; 4];
    let mut chunks = v.chunks_exact(4);
    for c in &mut chunks {
        for (s, &x) in lanes.iter_mut().zip(c) {
            *s += x as f64 * x as f64;
        }
    }
    let rest: f64 = chunks.remainder().iter().map(|&x| x as f64 * x as f64).sum();
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + rest
}

/// Buffers one thread reuses from text to text.
#[derive(Default)]
struct Scratch {
    ids: Vec<u32>,
    wordpiece: wordpiece::Scratch,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

impl Scratch {
    /// `f` with this thread's buffers (fresh ones if they are in use).
    fn with<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => f(&mut scratch),
            Err(_) => f(&mut Scratch::default()),
        })
    }
}

fn token_out_of_range(id: usize) -> Error {
    Error::Format(format!("token id {id} has no row in the embedding table"))
}

/// `(normalize, max_length)` of a model2vec `config.json`: normalize defaults to
/// false, max_length to 512 (null: no truncation).
fn parse_config(bytes: &[u8]) -> Result<(bool, Option<usize>)> {
    let config: Value = serde_json::from_slice(bytes).or_else(|e| format_err(format!("not valid JSON: {e}")))?;
    let Value::Object(config) = config else {
        return format_err("not a JSON object");
    };
    let normalize = match config.get("normalize") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return format_err(format!("`normalize` must be true or false, got {other}")),
    };
    let max_length = match config.get("max_length") {
        None => Some(DEFAULT_MAX_LENGTH),
        Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Some(n as usize),
            _ => return format_err(format!("`max_length` must be a positive integer or null, got {v}")),
        },
    };
    Ok((normalize, max_length))
}

/// The tokenizer, set up as model2vec sets it (no padding; truncation to `max_length`
/// tokens, or none), and the id of its unknown token, if it has one in its vocabulary.
fn parse_tokenizer(bytes: &[u8], max_length: Option<usize>) -> Result<(Tokenizer, Option<u32>)> {
    let text = std::str::from_utf8(bytes).or_else(|e| format_err(format!("not UTF-8: {e}")))?;
    let mut tokenizer =
        Tokenizer::from_str(text).or_else(|e| format_err(format!("not a readable HF tokenizer: {e}")))?;
    tokenizer.with_padding(None);
    let truncation = max_length.map(|max_length| TruncationParams { max_length, ..Default::default() });
    tokenizer
        .with_truncation(truncation)
        .or_else(|e| format_err(format!("cannot truncate to max_length {max_length:?}: {e}")))?;
    // As model2vec: the model's `unk_token` looked up in the vocabulary (WordPiece, BPE,
    // WordLevel), or a Unigram model's `unk_id`.
    let json: Value = serde_json::from_str(text).or_else(|e| format_err(format!("not valid JSON: {e}")))?;
    let model = &json["model"];
    let unk_id = if model["type"] == "Unigram" {
        model["unk_id"].as_u64().map(|id| id as u32)
    } else {
        model["unk_token"].as_str().and_then(|t| tokenizer.token_to_id(t))
    };
    Ok((tokenizer, unk_id))
}

/// The median of `lengths` as numpy computes it, truncated to an integer as model2vec
/// does (`int(np.median(...))`).
fn median(mut lengths: Vec<usize>) -> usize {
    if lengths.is_empty() {
        return 0;
    }
    lengths.sort_unstable();
    let n = lengths.len();
    if n % 2 == 1 {
        lengths[n / 2]
    } else {
        (lengths[n / 2 - 1] + lengths[n / 2]) / 2
    }
}

struct Tables {
    table: Array2<f32>,
    weights: Option<Vec<f32>>,
    mapping: Option<Vec<usize>>,
    half: bool,
}

/// The tensors of `model.safetensors`: `embeddings` (rows, d) (float32, float16,
/// float64, bfloat16 or int8), optional `weights` (n_tokens,) and `mapping`
/// (n_tokens,) of row indices.
fn read_tables(bytes: &[u8], n_tokens: usize) -> Result<Tables> {
    let st =
        SafeTensors::deserialize(bytes).or_else(|e| format_err(format!("not a readable safetensors file: {e}")))?;
    let embeddings = st.tensor("embeddings").or_else(|_| format_err("no `embeddings` tensor"))?;
    let shape = embeddings.shape().to_vec();
    if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
        return format_err(format!("`embeddings` must be a non-empty 2-D table, got shape {shape:?}"));
    }
    let values = floats("embeddings", &embeddings)?;
    let table = Array2::from_shape_vec((shape[0], shape[1]), values).or_else(|e| format_err(e.to_string()))?;
    let vector = |name: &str| -> Result<Option<TensorView<'_>>> {
        match st.tensor(name) {
            Ok(t) if t.shape() == [n_tokens] => Ok(Some(t)),
            Ok(t) => format_err(format!("`{name}` has shape {:?}, expected ({n_tokens},), one per token", t.shape())),
            Err(_) => Ok(None),
        }
    };
    let weights = vector("weights")?.map(|t| floats("weights", &t)).transpose()?;
    let mapping = match vector("mapping")? {
        None => None,
        Some(t) => {
            let ints: Vec<i64> = match t.dtype() {
                Dtype::I64 => t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
                Dtype::I32 => {
                    t.data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect()
                }
                other => return format_err(format!("`mapping` has dtype {other:?}, expected I64 or I32")),
            };
            let rows = table.nrows() as i64;
            if let Some(bad) = ints.iter().find(|&&r| r < 0 || r >= rows) {
                return format_err(format!("`mapping` points at row {bad}, outside the table's {rows} rows"));
            }
            Some(ints.into_iter().map(|r| r as usize).collect())
        }
    };
    if mapping.is_none() && table.nrows() != n_tokens {
        return format_err(format!(
            "the table has {} rows but the tokenizer has {n_tokens} tokens (and there is no `mapping`)",
            table.nrows()
        ));
    }
    Ok(Tables { table, weights, mapping, half: embeddings.dtype() == Dtype::F16 })
}

/// A float (or int8) tensor's values widened to f32, checked finite.
fn floats(name: &str, t: &TensorView<'_>) -> Result<Vec<f32>> {
    let b = t.data();
    let values: Vec<f32> = match t.dtype() {
        Dtype::F32 => b.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => b.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => b.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F64 => b.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        Dtype::I8 => b.iter().map(|&v| v as i8 as f32).collect(),
        other => return format_err(format!("`{name}` has dtype {other:?}, expected a float type or I8")),
    };
    if !values.iter().all(|v| v.is_finite()) {
        return format_err(format!("`{name}` contains NaN or infinite values"));
    }
    Ok(values)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A WordLevel tokenizer over whitespace-split words, `[UNK]` for the rest.
    fn tokenizer_json(words: &[&str]) -> String {
        let vocab: serde_json::Map<String, Value> =
            words.iter().enumerate().map(|(i, w)| (w.to_string(), Value::from(i))).collect();
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
        })
        .to_string()
    }

    /// A tensor to write: name, dtype, bytes, shape.
    pub(crate) type Raw = (&'static str, Dtype, Vec<u8>, Vec<usize>);

    pub(crate) fn write_model(dir: &Path, config: &str, tensors: Vec<Raw>) {
        let words = ["[UNK]", "a", "bb", "ccc"];
        std::fs::write(dir.join("tokenizer.json"), tokenizer_json(&words)).unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
        let views: Vec<_> =
            tensors.iter().map(|(n, d, b, s)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
        std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None::<HashMap<_, _>>).unwrap())
            .unwrap();
    }

    pub(crate) fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Rows: [UNK] (never used), a, bb, ccc.
    const TABLE: [f32; 8] = [9.0, 9.0, 1.0, 0.0, 0.0, 2.0, 3.0, 4.0];

    #[test]
    fn mean_pools_drops_unknown_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        write_model(
            dir.path(),
            r#"{"normalize": false, "max_length": 2}"#,
            vec![("embeddings", Dtype::F32, f32s(&TABLE), vec![4, 2])],
        );
        let e = StaticEncoder::from_dir(dir.path()).unwrap();
        assert_eq!((e.dim(), e.vocab_size(), e.max_length(), e.normalize()), (2, 4, Some(2), false));
        // median token length of [UNK], a, bb, ccc is (2 + 3) / 2 = 2: texts are cut
        // to 4 characters, then to 2 tokens.
        assert_eq!(e.median_token_length, 2);
        let x = e.encode(&["a bb", "zz a", "", "ccc ccc ccc", "a bb ccc"]).unwrap();
        assert_eq!(x.row(0).to_vec(), vec![0.5, 1.0]);
        assert_eq!(x.row(1).to_vec(), vec![1.0, 0.0]); // "zz" is unknown, dropped
        assert_eq!(x.row(2).to_vec(), vec![0.0, 0.0]);
        assert_eq!(x.row(3).to_vec(), vec![3.0, 4.0]); // "ccc " -> one token
        assert_eq!(e.tokenize(&["a bb ccc"]).unwrap(), vec![vec![1, 2]]);
        assert!(matches!(e.encode(&[]), Err(Error::InvalidInput(_))));
    }

    #[test]
    fn weights_mapping_and_normalisation() {
        let dir = tempfile::tempdir().unwrap();
        let mapping: Vec<u8> = [0i64, 1, 1, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        write_model(
            dir.path(),
            r#"{"normalize": true, "max_length": null}"#,
            vec![
                ("embeddings", Dtype::F32, f32s(&[0.0, 3.0, 4.0, 0.0]), vec![2, 2]),
                ("weights", Dtype::F32, f32s(&[1.0, 1.0, 3.0, 2.0]), vec![4]),
                ("mapping", Dtype::I64, mapping, vec![4]),
            ],
        );
        let e = StaticEncoder::from_dir(dir.path()).unwrap();
        let x = e.encode(&["a bb", "ccc", "?"]).unwrap();
        // a: 1 * [4, 0]; bb: 3 * [4, 0] -> mean [8, 0] -> [1, 0]; ccc: 2 * [0, 3] -> [0, 1].
        assert_eq!(x.row(0).to_vec(), vec![1.0, 0.0]);
        assert_eq!(x.row(1).to_vec(), vec![0.0, 1.0]);
        assert_eq!(x.row(2).to_vec(), vec![0.0, 0.0]);
    }

    #[test]
    fn bad_folders_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        match StaticEncoder::from_dir(dir.path().join("missing")) {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
        let err = StaticEncoder::from_dir(dir.path()).unwrap_err();
        assert!(matches!(&err, Error::Format(m) if m.contains("no config.json")), "{err}");

        let table = || vec![("embeddings", Dtype::F32, f32s(&TABLE), vec![4, 2])];
        let cases: Vec<(&str, Vec<Raw>, &str)> = vec![
            ("[1]", table(), "not a JSON object"),
            (r#"{"normalize": "yes"}"#, table(), "`normalize`"),
            (r#"{"max_length": 0}"#, table(), "`max_length`"),
            ("{}", vec![("table", Dtype::F32, f32s(&TABLE), vec![4, 2])], "no `embeddings`"),
            ("{}", vec![("embeddings", Dtype::F32, f32s(&TABLE[..6]), vec![3, 2])], "3 rows"),
            ("{}", vec![("embeddings", Dtype::I32, vec![0; 32], vec![4, 2])], "dtype"),
            ("{}", vec![("embeddings", Dtype::F32, f32s(&[f32::NAN; 8]), vec![4, 2])], "NaN"),
            (
                "{}",
                vec![
                    ("embeddings", Dtype::F32, f32s(&TABLE), vec![4, 2]),
                    ("mapping", Dtype::I64, [7i64; 4].iter().flat_map(|v| v.to_le_bytes()).collect(), vec![4]),
                ],
                "outside the table",
            ),
        ];
        for (config, tensors, want) in cases {
            write_model(dir.path(), config, tensors);
            match StaticEncoder::from_dir(dir.path()) {
                Err(Error::Format(m)) => assert!(m.contains(want), "{want}: {m}"),
                other => panic!("{want}: {other:?}"),
            }
        }
        write_model(dir.path(), "{}", table());
        std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 3}").unwrap();
        let err = StaticEncoder::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json") && err.contains("not a readable HF tokenizer"), "{err}");
        std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
        assert!(matches!(StaticEncoder::from_dir(dir.path()), Err(Error::Format(_))));
    }

    #[test]
    fn bert_tokenizers_take_the_fast_path_with_hfs_ids() {
        use crate::wordpiece::tests::{bert_json, bert_normalizer, EDGE_CASES};
        let dir = tempfile::tempdir().unwrap();
        let json = bert_json(bert_normalizer(true, true, None, true), "##", 100);
        let n = Tokenizer::from_str(&json).unwrap().get_vocab_size(true);
        let texts: Vec<&str> = EDGE_CASES.to_vec();
        for max_length in ["4", "null"] {
            write_model(
                dir.path(),
                &format!(r#"{{"normalize": true, "max_length": {max_length}}}"#),
                vec![("embeddings", Dtype::F32, f32s(&vec![0.5; n * 2]), vec![n, 2])],
            );
            std::fs::write(dir.path().join("tokenizer.json"), &json).unwrap();
            let fast = StaticEncoder::from_dir(dir.path()).unwrap();
            assert!(fast.wordpiece.is_some());
            let hf = StaticEncoder { wordpiece: None, ..fast.clone() };
            let ids = fast.tokenize(&texts).unwrap();
            assert_eq!(ids, hf.tokenize(&texts).unwrap(), "max_length {max_length}");
            assert!(ids.iter().any(|t| t.len() > 4) == (max_length == "null"));
            assert!(ids.iter().flatten().all(|&id| id != 1), "[UNK] (id 1) is dropped");
            assert_eq!(fast.encode(&texts).unwrap(), hf.encode(&texts).unwrap());
        }
    }

    #[test]
    fn median_is_numpys_truncated() {
        assert_eq!(median(vec![1, 2, 3, 10]), 2);
        assert_eq!(median(vec![1, 4, 3]), 3);
        assert_eq!(median(vec![]), 0);
    }
}
