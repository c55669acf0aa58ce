//! [`WordPiece`]: a BERT WordPiece tokenizer giving exactly the token ids of HF
//! `tokenizers` (`encode(text, add_special_tokens=false)`) for a `tokenizer.json` made
//! of a BertNormalizer, the BertPreTokenizer and a WordPiece model, without offsets,
//! alignments or an allocation per token.
//!
//! The steps, as HF runs them:
//! 1. added tokens (all matched on the raw text: none may be `normalized`, `lstrip`,
//!    `rstrip` or `single_word`) are cut out, leftmost-longest first; each gives its id
//!    and the text between them goes through steps 2 to 4;
//! 2. normalisation: `clean_text` drops NUL, U+FFFD and control characters (categories
//!    Cc, Cf, Co, except tab, newline and carriage return) and maps whitespace to a
//!    space; `handle_chinese_chars` puts spaces around CJK ideographs; accents are
//!    stripped (NFD, then nonspacing marks dropped) when `strip_accents` is true, or
//!    unset and `lowercase` true; `lowercase` lowercases each character;
//! 3. words: split on whitespace, each punctuation character (ASCII punctuation or a
//!    Unicode P* category) a word of its own;
//! 4. WordPiece: greedy longest match from the left, continuation pieces looked up
//!    with the `continuing_subword_prefix`; a word with a character no piece covers,
//!    or longer than `max_input_chars_per_word` characters, is one unknown token.
//!
//! Unicode tables are those HF uses (`unicode_categories`, and
//! `unicode-normalization-alignments` for NFD), so that ids agree on every character.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::ControlFlow;

use ahash::AHashMap;
use tokenizers::{Model, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, Tokenizer};
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

/// A plain BERT WordPiece tokenizer, read from an HF [`Tokenizer`] by
/// [`WordPiece::from_tokenizer`]; see the module doc for the semantics.
#[derive(Clone, Debug)]
pub(crate) struct WordPiece {
    /// Every piece of the model's vocabulary, looked up at the start of a word.
    pieces: Pieces,
    /// Continuation pieces, keyed without their prefix (`##ing` under `ing`).
    suffixes: Pieces,
    unk: u32,
    max_chars: usize,
    clean_text: bool,
    chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
    /// Added tokens and their ids, longest first.
    added: Vec<(Box<str>, u32)>,
    /// The first bytes of added tokens: one (searched for with `memchr`) or a set.
    added_first: FirstBytes,
}

/// Bytes after the text in the normalisation buffer, so that a 16-byte load at any
/// position of the text stays in it (see [`Pieces::get`]).
const PADDING: &str = "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// Pieces and their ids. A piece of at most 15 bytes is keyed by one `u128` (its bytes,
/// zero-padded, and its length in the top byte), so a lookup is a load, a mask, a
/// multiply and an integer compare; longer pieces are keyed by their bytes.
#[derive(Clone, Debug, Default)]
struct Pieces {
    short: HashMap<u128, u32, BuildHasherDefault<PackedHasher>>,
    long: AHashMap<Box<[u8]>, u32>,
    /// The longest piece, in bytes: no longer slice can match.
    longest: usize,
}

impl Pieces {
    fn insert(&mut self, piece: &str, id: u32) {
        let b = piece.as_bytes();
        if b.len() < 16 {
            let mut chunk = [0u8; 16];
            chunk[..b.len()].copy_from_slice(b);
            self.short.insert(pack(chunk, b.len()), id);
        } else {
            self.long.insert(b.into(), id);
        }
        self.longest = self.longest.max(b.len());
    }

    /// The id of the piece `text[start..end]` (`start < end`); quickest when `text`
    /// holds [`PADDING`] after the text proper.
    #[inline]
    fn get(&self, text: &[u8], start: usize, end: usize) -> Option<u32> {
        let n = end - start;
        if n >= 16 {
            return self.long.get(&text[start..end]).copied();
        }
        let chunk: [u8; 16] = match text.get(start..start + 16) {
            Some(chunk) => chunk.try_into().ok()?,
            None => {
                let mut chunk = [0u8; 16];
                chunk[..n].copy_from_slice(&text[start..end]);
                chunk
            }
        };
        self.short.get(&pack(chunk, n)).copied()
    }
}

/// The key of a piece of `n < 16` bytes, the first `n` of `chunk`.
#[inline]
fn pack(chunk: [u8; 16], n: usize) -> u128 {
    (u128::from_le_bytes(chunk) & ((1u128 << (8 * n)) - 1)) | ((n as u128) << 120)
}

/// The hash of a packed piece: the halves, offset, multiplied as 64-bit numbers into
/// 128 bits, and the halves of the product xored (high and low bits all mixed).
#[derive(Default)]
struct PackedHasher(u64);

impl Hasher for PackedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    #[inline]
    fn write_u128(&mut self, v: u128) {
        let product =
            ((v as u64) ^ 0x243F_6A88_85A3_08D3) as u128 * (((v >> 64) as u64) ^ 0x1319_8A2E_0370_7344) as u128;
        self.0 = (product as u64) ^ (product >> 64) as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Buffers reused from text to text.
#[derive(Default)]
pub(crate) struct Scratch {
    normalized: String,
    staged: String,
    word: Vec<u32>,
}

/// The bytes that added tokens start with.
#[derive(Clone, Debug)]
enum FirstBytes {
    One(u8),
    Set(Box<[bool; 256]>),
}

/// Where ids go: `ids`, up to `limit` of them.
struct Sink<'a> {
    ids: &'a mut Vec<u32>,
    limit: usize,
}

impl Sink<'_> {
    fn push(&mut self, id: u32) -> ControlFlow<()> {
        self.ids.push(id);
        if self.ids.len() >= self.limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl WordPiece {
    /// The fast tokenizer for `tokenizer`, or `None` when its pipeline is not a plain
    /// BERT WordPiece one (see the module doc) and HF must run it: another normalizer,
    /// pre-tokenizer or model, an unknown token outside the vocabulary, added tokens
    /// matched after normalisation or with stripping, or special tokens encoded as text.
    /// Post-processors add nothing without special tokens, so any BERT-like one passes.
    pub(crate) fn from_tokenizer(tokenizer: &Tokenizer) -> Option<Self> {
        let Some(NormalizerWrapper::BertNormalizer(norm)) = tokenizer.get_normalizer() else {
            return None;
        };
        let Some(PreTokenizerWrapper::BertPreTokenizer(_)) = tokenizer.get_pre_tokenizer() else {
            return None;
        };
        let ModelWrapper::WordPiece(model) = tokenizer.get_model() else {
            return None;
        };
        match tokenizer.get_post_processor() {
            None
            | Some(PostProcessorWrapper::Bert(_))
            | Some(PostProcessorWrapper::Template(_))
            | Some(PostProcessorWrapper::Roberta(_)) => {}
            Some(_) => return None,
        }
        if tokenizer.get_encode_special_tokens() {
            return None;
        }
        let vocab = model.get_vocab();
        let unk = *vocab.get(&model.unk_token)?;
        let prefix = model.continuing_subword_prefix.as_str();
        let (mut pieces, mut suffixes) = (Pieces::default(), Pieces::default());
        for (piece, &id) in &vocab {
            pieces.insert(piece, id);
            match piece.strip_prefix(prefix) {
                Some(suffix) if !suffix.is_empty() => suffixes.insert(suffix, id),
                _ => {}
            }
        }

        let mut added = Vec::new();
        for (id, token) in tokenizer.get_added_tokens_decoder() {
            if token.normalized || token.lstrip || token.rstrip || token.single_word {
                return None;
            }
            if !token.content.is_empty() {
                added.push((token.content.into_boxed_str(), id));
            }
        }
        added.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let mut set = [false; 256];
        for (content, _) in &added {
            set[content.as_bytes()[0] as usize] = true;
        }
        let added_first = match set.iter().filter(|&&b| b).count() {
            1 => FirstBytes::One(set.iter().position(|&b| b)? as u8),
            _ => FirstBytes::Set(Box::new(set)),
        };
        Some(WordPiece {
            pieces,
            suffixes,
            unk,
            max_chars: model.max_input_chars_per_word,
            clean_text: norm.clean_text,
            chinese_chars: norm.handle_chinese_chars,
            strip_accents: norm.strip_accents.unwrap_or(norm.lowercase),
            lowercase: norm.lowercase,
            added,
            added_first,
        })
    }

    /// Append the ids of `text` to `ids` (cleared first), the first `limit` only: those
    /// of HF's encoding truncated to `limit` tokens.
    pub(crate) fn tokenize(&self, text: &str, limit: usize, scratch: &mut Scratch, ids: &mut Vec<u32>) {
        ids.clear();
        if limit > 0 {
            let _ = self.tokenize_into(text, scratch, &mut Sink { ids, limit });
        }
    }

    fn tokenize_into(&self, text: &str, scratch: &mut Scratch, sink: &mut Sink<'_>) -> ControlFlow<()> {
        let mut rest = text;
        while let Some((start, end, id)) = self.next_added(rest) {
            self.segment(&rest[..start], scratch, sink)?;
            sink.push(id)?;
            rest = &rest[end..];
        }
        self.segment(rest, scratch, sink)
    }

    /// The leftmost added token in `text`, the longest one there: (start, end, id).
    fn next_added(&self, text: &str) -> Option<(usize, usize, u32)> {
        if self.added.is_empty() {
            return None;
        }
        let bytes = text.as_bytes();
        let at = |i: usize| {
            self.added.iter().find(|(t, _)| bytes[i..].starts_with(t.as_bytes())).map(|(t, id)| (i, i + t.len(), *id))
        };
        match &self.added_first {
            FirstBytes::One(b) => memchr::memchr_iter(*b, bytes).find_map(at),
            FirstBytes::Set(set) => (0..bytes.len()).filter(|&i| set[bytes[i] as usize]).find_map(at),
        }
    }

    /// Normalise, split into words and tokenise a text free of added tokens.
    fn segment(&self, text: &str, scratch: &mut Scratch, sink: &mut Sink<'_>) -> ControlFlow<()> {
        if text.is_empty() {
            return ControlFlow::Continue(());
        }
        let Scratch { normalized, staged, word } = scratch;
        if text.is_ascii() {
            self.normalize_ascii(text, normalized);
        } else {
            self.normalize_unicode(text, staged, normalized);
        }
        let len = normalized.len();
        normalized.push_str(PADDING);
        let (s, padded) = (&normalized[..len], normalized.as_bytes());
        let bytes = s.as_bytes();
        let (mut start, mut i) = (0, 0);
        while i < bytes.len() {
            let (len, space, punct) = if bytes[i].is_ascii() {
                let b = bytes[i];
                (1, b.is_ascii_whitespace() || b == 0x0b, b.is_ascii_punctuation())
            } else {
                let Some(c) = s[i..].chars().next() else { break };
                (c.len_utf8(), c.is_whitespace(), c.is_punctuation())
            };
            if space || punct {
                if start < i {
                    self.word(padded, start, i, word, sink)?;
                }
                if punct {
                    self.word(padded, i, i + len, word, sink)?;
                }
                start = i + len;
            }
            i += len;
        }
        if start < len {
            self.word(padded, start, len, word, sink)?;
        }
        ControlFlow::Continue(())
    }

    /// Step 2 for ASCII text, where NFD, accents and CJK change nothing.
    fn normalize_ascii(&self, text: &str, out: &mut String) {
        out.clear();
        for b in text.bytes() {
            let c = if self.clean_text && (b < 0x20 || b == 0x7f) {
                match b {
                    b'\t' | b'\n' | b'\r' => b' ',
                    _ => continue,
                }
            } else if self.lowercase {
                b.to_ascii_lowercase()
            } else {
                b
            };
            out.push(c as char);
        }
    }

    /// Step 2 in general: cleaning and CJK spacing into `staged`, then NFD, mark
    /// removal and lowercasing into `out`.
    fn normalize_unicode(&self, text: &str, staged: &mut String, out: &mut String) {
        staged.clear();
        for c in text.chars() {
            let c = if self.clean_text {
                if c == '\0' || c == '\u{fffd}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) {
                    ' '
                } else {
                    c
                }
            } else {
                c
            };
            if self.chinese_chars && is_chinese_char(c) {
                staged.extend([' ', c, ' ']);
            } else {
                staged.push(c);
            }
        }
        out.clear();
        let mut put = |c: char| {
            if self.lowercase {
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
        };
        if self.strip_accents {
            staged.as_str().nfd().map(|(c, _)| c).filter(|c| !c.is_mark_nonspacing()).for_each(&mut put);
        } else {
            staged.chars().for_each(put);
        }
    }

    /// Step 4 for the word `text[from..to]` (`text` best padded, see [`Pieces::get`]);
    /// `pieces` is scratch space for its ids.
    fn word(&self, text: &[u8], from: usize, to: usize, pieces: &mut Vec<u32>, sink: &mut Sink<'_>) -> ControlFlow<()> {
        let word = &text[from..to];
        if word.len() > self.max_chars && word.iter().filter(|&&b| !is_continuation(b)).count() > self.max_chars {
            return sink.push(self.unk);
        }
        // The char boundary at or before `i` (`from <= i <= to`).
        let floor = |mut i: usize| {
            while i > from && i < to && is_continuation(text[i]) {
                i -= 1;
            }
            i
        };
        pieces.clear();
        let mut start = from;
        while start < to {
            let map = if start == from { &self.pieces } else { &self.suffixes };
            let mut end = floor(to.min(start + map.longest));
            let id = loop {
                if end <= start {
                    return sink.push(self.unk);
                }
                if let Some(id) = map.get(text, start, end) {
                    break id;
                }
                end = floor(end - 1);
            };
            pieces.push(id);
            start = end;
        }
        pieces.iter().try_for_each(|&id| sink.push(id))
    }
}

/// Whether `b` continues a UTF-8 character (is not its first byte).
fn is_continuation(b: u8) -> bool {
    b & 0xC0 == 0x80
}

/// BertNormalizer's whitespace: tab, newline, carriage return and Unicode White_Space.
fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// BertNormalizer's control characters: Cc, Cf and Co, except tab, newline, return.
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

/// BertNormalizer's CJK ideographs (the CJK Unified Ideographs blocks and extensions,
/// and the compatibility ideographs).
fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};
    use std::str::FromStr;
    use std::sync::OnceLock;
    use tokenizers::TruncationParams;

    /// Texts every tokenizer is checked on.
    pub(crate) const EDGE_CASES: &[&str] = &[
        "",
        " ",
        "\t\n  \r\n",
        "hello world",
        "Hello, World! Unaffable playing runner.",
        "Ça va ? Naïve café, résumé, Ångström, Øresund, straße, ñandú, İstanbul",
        "日本語のテキストと中文句子。",
        "한국어 문장입니다",
        "emoji 🎉🚀 and text 👍🏽",
        "مرحبا بالعالم",
        "Ελληνικά ΣΟΦΟΣ κείμενα",
        "ﬁne ligatures and ﬀ ½ ² ℌ",
        "zero\u{200b}width\u{200d}joiners\u{feff}and\u{2060}more",
        "combining e\u{301} accents a\u{308}\u{323} \u{301}alone q\u{1d165}\u{1d16d}\u{1d166}",
        "control \u{0}\u{1}\u{7f}\u{85}\u{b}\u{c}\u{1c} chars \u{fffd} \u{e000}private",
        "[UNK] [CLS] hello [SEP] [PAD] [MASK] [MASK[MASK]] [AB][ABC] [ABCD <x><x>x>",
        "quotes “like” ‘this’ — and that … «guillemets» ¿qué? ¡sí! 「括弧」",
        "UPPER lower MiXeD",
        "numbers 12345 3.14159 1e-10 $5 +/- 50% a=b <tag> ~home`s^ |pipe|",
        "tabs\tand\nnewlines\r\nand\u{a0}nbsp\u{3000}ideographic\u{2028}line",
        "supercalifragilisticexpialidocioussupercalifragilisticexpialidocioussupercalifragilisticexpialidocious1",
        "supercalifragilisticexpialidocioussupercalifragilisticexpialidocioussupercalifragilisticexpialidocious12",
        "ééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé",
        "éééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé",
        "\u{f900}\u{2f800}\u{20000}\u{3400}x\u{4e00}y",
        "unaffable##able ##ing @@ing playing",
        "mixed日本hello中文world",
    ];

    /// A small BERT `tokenizer.json`: single characters (and their continuations), a
    /// few words and word pieces, special tokens, and two added non-special tokens.
    pub(crate) fn bert_json(normalizer: Value, prefix: &str, max_chars: usize) -> String {
        let mut pieces: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(String::from).to_vec();
        let chars = (0x21u8..0x7f).map(char::from).chain("éñåßüÅÉÑ日本語中文。“”—…«»αβσς한국😀".chars());
        for c in chars {
            pieces.push(c.to_string());
            pieces.push(format!("{prefix}{c}"));
        }
        for w in ["the", "hello", "world", "Hello", "un", "play", "runn", "cafe", "café", "naive", "Ça", "va", "ang"]
        {
            pieces.push(w.into());
        }
        for w in ["aff", "able", "ing", "er", "ed", "str", "om", "ström", "ow", "orld", "x"] {
            pieces.push(format!("{prefix}{w}"));
        }
        pieces.push(prefix.into());
        let vocab: serde_json::Map<String, Value> =
            pieces.iter().enumerate().map(|(i, w)| (w.clone(), Value::from(i))).collect();
        let n = pieces.len();
        let added = |id: usize, content: &str, special: bool| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": special})
        };
        let mut added_tokens: Vec<Value> =
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().enumerate().map(|(i, t)| added(i, t, true)).collect();
        added_tokens.extend([added(n, "[AB]", false), added(n + 1, "[ABC]", false), added(n + 2, "<x>", false)]);
        json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added_tokens,
            "normalizer": normalizer, "pre_tokenizer": {"type": "BertPreTokenizer"}, "post_processor": null,
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": prefix,
                      "max_input_chars_per_word": max_chars, "vocab": vocab}
        })
        .to_string()
    }

    pub(crate) fn bert_normalizer(
        clean_text: bool,
        chinese: bool,
        strip_accents: Option<bool>,
        lowercase: bool,
    ) -> Value {
        json!({"type": "BertNormalizer", "clean_text": clean_text, "handle_chinese_chars": chinese,
               "strip_accents": strip_accents, "lowercase": lowercase})
    }

    /// The hand-written tokenizers: every normalizer flag on and off, another prefix,
    /// a short word limit.
    fn small_tokenizers() -> Vec<String> {
        vec![
            bert_json(bert_normalizer(true, true, None, true), "##", 100),
            bert_json(bert_normalizer(true, true, None, false), "##", 100),
            bert_json(bert_normalizer(true, false, Some(true), false), "##", 100),
            bert_json(bert_normalizer(false, true, Some(false), true), "@@", 100),
            bert_json(bert_normalizer(false, false, None, false), "##", 8),
        ]
    }

    /// HF's tokenizer (no padding, no truncation) and ours, from `tokenizer.json` text.
    fn pair(json: &str) -> (Tokenizer, WordPiece) {
        let mut hf = Tokenizer::from_str(json).unwrap();
        hf.with_padding(None);
        hf.with_truncation(None).unwrap();
        let ours = WordPiece::from_tokenizer(&hf).expect("a plain BERT WordPiece tokenizer");
        (hf, ours)
    }

    fn ours(wp: &WordPiece, text: &str, limit: usize) -> Vec<u32> {
        let mut ids = Vec::new();
        wp.tokenize(text, limit, &mut Scratch::default(), &mut ids);
        ids
    }

    /// Our ids equal HF's on every text, untruncated and truncated to 16 tokens.
    fn assert_same_ids<'a>(json: &str, texts: impl IntoIterator<Item = &'a str>) -> usize {
        let (hf, wp) = pair(json);
        let mut hf16 = hf.clone();
        hf16.with_truncation(Some(TruncationParams { max_length: 16, ..Default::default() })).unwrap();
        let mut scratch = Scratch::default();
        let mut ids = Vec::new();
        let mut n = 0;
        for text in texts {
            for (tokenizer, limit) in [(&hf, usize::MAX), (&hf16, 16)] {
                wp.tokenize(text, limit, &mut scratch, &mut ids);
                let want = tokenizer.encode_fast(text, false).unwrap();
                assert_eq!(ids, want.get_ids(), "limit {limit}, text {text:?}");
            }
            n += 1;
        }
        n
    }

    #[test]
    fn edge_cases_match_hf() {
        for json in small_tokenizers() {
            assert_same_ids(&json, EDGE_CASES.iter().copied());
        }
        let (_, wp) = pair(&small_tokenizers()[0]);
        // A few ids spelled out: greedy longest match, continuations, added tokens
        // (leftmost-longest), an uncovered character and the word limit give [UNK] (1).
        let get = |map: &Pieces, piece: &str| map.get(format!("{piece}{PADDING}").as_bytes(), 0, piece.len()).unwrap();
        let id = |piece: &str| get(&wp.pieces, piece);
        let cont = |piece: &str| get(&wp.suffixes, piece);
        let added = |token: &str| wp.added.iter().find(|(t, _)| &**t == token).unwrap().1;
        assert_eq!(ours(&wp, "Unaffable", usize::MAX), vec![id("un"), cont("aff"), cont("able")]);
        assert_eq!(ours(&wp, "x[ABC]y [AB]", usize::MAX), vec![id("x"), added("[ABC]"), id("y"), added("[AB]")]);
        assert_eq!(ours(&wp, "the ☃ the", usize::MAX), vec![id("the"), 1, id("the")]);
        assert_eq!(ours(&wp, &"a".repeat(101), usize::MAX), vec![1]);
        assert_eq!(ours(&wp, "hello world hello", 2), vec![id("hello"), id("world")]);
        assert_eq!(ours(&wp, "日本", usize::MAX), vec![id("日"), id("本")]);
        // Lookups without the padding after the text: the same ids.
        assert_eq!(wp.pieces.get(b"xhello", 1, 6), Some(id("hello")));
        assert_eq!(wp.suffixes.get("é".as_bytes(), 0, 2), Some(cont("é")));
        assert_eq!(wp.pieces.get(b"hellp", 0, 5), None);
    }

    /// Every line of STS-B (all splits, whole CSV lines) and every `corpus_step`-th line
    /// of the corpus, when the data is there (`PROJROUTE_DATA`, default `../shared/data`).
    fn data_texts(corpus_step: usize) -> Vec<String> {
        let data = std::env::var("PROJROUTE_DATA")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data").to_string());
        let files =
            [("stsb/train.csv", 1), ("stsb/dev.csv", 1), ("stsb/test.csv", 1), ("corpus/sentences.txt", corpus_step)];
        let texts: Vec<String> = files
            .iter()
            .filter_map(|(f, step)| Some((std::fs::read_to_string(format!("{data}/{f}")).ok()?, *step)))
            .flat_map(|(t, step)| t.lines().step_by(step).map(String::from).collect::<Vec<_>>())
            .collect();
        if texts.is_empty() {
            eprintln!("no STS-B or corpus data under {data} (set PROJROUTE_DATA): data texts skipped");
        }
        texts
    }

    /// Real tokenizers, when given: `PROJROUTE_TOKENIZER` (a `tokenizer.json`, e.g.
    /// MiniLM's) and `PROJROUTE_STATIC_MODEL` (a model2vec folder).
    fn real_tokenizers() -> Vec<String> {
        let paths = [
            std::env::var("PROJROUTE_TOKENIZER").ok(),
            std::env::var("PROJROUTE_STATIC_MODEL").ok().map(|d| format!("{d}/tokenizer.json")),
        ];
        paths
            .into_iter()
            .flatten()
            .map(|p| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")))
            .collect()
    }

    #[test]
    fn data_and_real_tokenizers_match_hf() {
        // A tenth of the corpus keeps the test near ten seconds (HF is the slow side);
        // all of it matched when this was written.
        let texts = data_texts(10);
        let real = real_tokenizers();
        if real.is_empty() {
            eprintln!("PROJROUTE_TOKENIZER / PROJROUTE_STATIC_MODEL unset: real tokenizers skipped");
        }
        for json in real.iter().chain(&small_tokenizers()[..2]) {
            let n = assert_same_ids(json, EDGE_CASES.iter().copied().chain(texts.iter().map(String::as_str)));
            assert_eq!(n, EDGE_CASES.len() + texts.len());
        }
    }

    #[test]
    fn other_pipelines_fall_back_to_hf() {
        let base: Value = serde_json::from_str(&small_tokenizers()[0]).unwrap();
        let variant = |edit: &dyn Fn(&mut Value)| {
            let mut v = base.clone();
            edit(&mut v);
            Tokenizer::from_str(&v.to_string()).unwrap()
        };
        assert!(WordPiece::from_tokenizer(&variant(&|_| {})).is_some());
        let no_fast_path: [&dyn Fn(&mut Value); 6] = [
            &|v| v["normalizer"] = json!({"type": "Sequence", "normalizers": [v["normalizer"].clone()]}),
            &|v| v["pre_tokenizer"] = json!({"type": "Whitespace"}),
            &|v| v["added_tokens"][5]["normalized"] = json!(true),
            &|v| v["added_tokens"][6]["lstrip"] = json!(true),
            &|v| v["model"]["unk_token"] = json!("<unk>"),
            &|v| v["model"] = json!({"type": "WordLevel", "vocab": v["model"]["vocab"].clone(), "unk_token": "[UNK]"}),
        ];
        for edit in no_fast_path {
            assert!(WordPiece::from_tokenizer(&variant(edit)).is_none());
        }
    }

    fn small_pairs() -> &'static [(Tokenizer, WordPiece)] {
        static PAIRS: OnceLock<Vec<(Tokenizer, WordPiece)>> = OnceLock::new();
        PAIRS.get_or_init(|| small_tokenizers().iter().map(|j| pair(j)).collect())
    }

    fn check_random(text: &str) -> Result<(), TestCaseError> {
        for (hf, wp) in small_pairs() {
            let want = hf.encode_fast(text, false).unwrap();
            prop_assert_eq!(ours(wp, text, usize::MAX), want.get_ids());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn random_unicode_matches_hf(text in any::<String>()) {
            check_random(&text)?;
        }

        #[test]
        fn random_tricky_text_matches_hf(
            text in "[a-zA-Z0-9 .,!#@\\[\\]<>ABCx\t\n\r\u{0}\u{1}\u{7f}\u{85}\u{a0}\u{200b}\u{301}\u{308}\u{1d165}\
                      éñÅßİΣς日本中文\u{f900}。“”—…한🎉]{0,60}"
        ) {
            check_random(&text)?;
        }
    }
}
