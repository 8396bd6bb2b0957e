//! Model cards: the `general.*` keys convert_hf_to_gguf.py (gguf-py's metadata.py) derives from
//! README.md front matter, config.json's `_name_or_path` and the folder name. Expectations are
//! gguf-py's own unit tests (gguf-py/tests/test_metadata.py, copied as data) and keys worked out
//! by hand from metadata.py for cards shaped like real releases' (Qwen3, Llama 3.1, Gemma 3).

use kiln::arch::general::{model_id_components, IdParts};

/// gguf-py/tests/test_metadata.py `test_get_model_id_components`: (model id, total params,
/// [full name, organization, basename, finetune, version, size label]).
#[rustfmt::skip]
const ID_CASES: &[(&str, i64, [Option<&str>; 6])] = &[
    ("Mistral/Mixtral-8x7B-Instruct-v0.1", 0, [Some("Mixtral-8x7B-Instruct-v0.1"), Some("Mistral"), Some("Mixtral"), Some("Instruct"), Some("v0.1"), Some("8x7B")]),
    ("Mixtral-8x7B-Instruct-v0.1", 0, [Some("Mixtral-8x7B-Instruct-v0.1"), None, Some("Mixtral"), Some("Instruct"), Some("v0.1"), Some("8x7B")]),
    ("Mixtral-8x7B-Instruct", 0, [Some("Mixtral-8x7B-Instruct"), None, Some("Mixtral"), Some("Instruct"), None, Some("8x7B")]),
    ("Mixtral-8x7B-v0.1", 0, [Some("Mixtral-8x7B-v0.1"), None, Some("Mixtral"), None, Some("v0.1"), Some("8x7B")]),
    ("Mixtral-8x7B", 0, [Some("Mixtral-8x7B"), None, Some("Mixtral"), None, None, Some("8x7B")]),
    ("Mixtral-v0.1", 0, [Some("Mixtral-v0.1"), None, Some("Mixtral"), None, Some("v0.1"), None]),
    ("Mixtral", 0, [Some("Mixtral"), None, None, None, None, None]),
    ("NousResearch/Meta-Llama-3-8B", 0, [Some("Meta-Llama-3-8B"), Some("NousResearch"), Some("Meta-Llama-3"), None, None, Some("8B")]),
    ("Qwen1.5-MoE-A2.7B-Chat", 0, [Some("Qwen1.5-MoE-A2.7B-Chat"), None, Some("Qwen1.5-MoE"), Some("Chat"), None, Some("A2.7B")]),
    ("Qwen2-57B-A14B-Instruct", 0, [Some("Qwen2-57B-A14B-Instruct"), None, Some("Qwen2"), Some("Instruct"), None, Some("57B-A14B")]),
    ("microsoft/Phi-3-mini-4k-instruct", 4000000000, [Some("Phi-3-mini-4k-instruct"), Some("microsoft"), Some("Phi-3"), Some("4k-instruct"), None, Some("mini")]),
    ("delphi-suite/stories-llama2-50k", 50000, [Some("stories-llama2-50k"), Some("delphi-suite"), Some("stories-llama2"), None, None, Some("50K")]),
    ("DeepSeek-Coder-V2-Lite-Instruct", 0, [Some("DeepSeek-Coder-V2-Lite-Instruct"), None, Some("DeepSeek-Coder-V2-Lite"), Some("Instruct"), None, None]),
    ("crestf411/daybreak-kunoichi-2dpo-7b", 0, [Some("daybreak-kunoichi-2dpo-7b"), Some("crestf411"), Some("daybreak-kunoichi"), Some("2dpo"), None, Some("7B")]),
    ("Qwen2-0.5B-Instruct", 0, [Some("Qwen2-0.5B-Instruct"), None, Some("Qwen2"), Some("Instruct"), None, Some("0.5B")]),
    ("smallcloudai/Refact-1_6B-fim", 0, [Some("Refact-1_6B-fim"), Some("smallcloudai"), Some("Refact"), Some("fim"), None, Some("1.6B")]),
    ("UCLA-AGI/Gemma-2-9B-It-SPPO-Iter3", 0, [Some("Gemma-2-9B-It-SPPO-Iter3"), Some("UCLA-AGI"), Some("Gemma-2"), Some("It-SPPO"), Some("Iter3"), Some("9B")]),
    ("NousResearch/Hermes-2-Theta-Llama-3-8B", 0, [Some("Hermes-2-Theta-Llama-3-8B"), Some("NousResearch"), Some("Hermes-2-Theta-Llama-3"), None, None, Some("8B")]),
    ("SeaLLMs/SeaLLMs-v3-7B-Chat", 0, [Some("SeaLLMs-v3-7B-Chat"), Some("SeaLLMs"), Some("SeaLLMs-v3"), Some("Chat"), None, Some("7B")]),
    ("internlm/internlm2_5-7b-chat-1m", 7000000000, [Some("internlm2_5-7b-chat-1m"), Some("internlm"), Some("internlm2_5"), Some("chat-1m"), None, Some("7B")]),
    ("pszemraj/jamba-900M-v0.13-KIx2", 0, [Some("jamba-900M-v0.13-KIx2"), Some("pszemraj"), Some("jamba"), Some("KIx2"), Some("v0.13"), Some("900M")]),
    ("state-spaces/mamba-2.8b-hf", 0, [Some("mamba-2.8b-hf"), Some("state-spaces"), Some("mamba"), Some("hf"), None, Some("2.8B")]),
    ("abacaj/llama-161M-100B", 161000000, [Some("llama-161M-100B"), Some("abacaj"), Some("llama"), Some("100b"), None, Some("161M")]),
    ("SparseLLM/relu-100B", 1340000000, [Some("relu-100B"), Some("SparseLLM"), Some("relu"), Some("100b"), None, None]),
    ("bigscience/bloom-7b1-petals", 0, [Some("bloom-7b1-petals"), Some("bigscience"), Some("bloom"), Some("petals"), None, Some("7.1B")]),
    ("MaziyarPanahi/GreenNode-mini-7B-multilingual-v1olet-Mistral-7B-Instruct-v0.1", 0, [Some("GreenNode-mini-7B-multilingual-v1olet-Mistral-7B-Instruct-v0.1"), Some("MaziyarPanahi"), Some("GreenNode-mini"), Some("multilingual-v1olet-Mistral-Instruct"), Some("v0.1"), Some("7B")]),
    ("mistralai/Mistral-Nemo-Instruct-2407", 0, [Some("Mistral-Nemo-Instruct-2407"), Some("mistralai"), Some("Mistral-Nemo"), Some("Instruct"), Some("2407"), None]),
    ("deepseek-ai/DeepSeek-V2-Chat-0628", 0, [Some("DeepSeek-V2-Chat-0628"), Some("deepseek-ai"), Some("DeepSeek-V2"), Some("Chat"), Some("0628"), None]),
    ("OpenGVLab/Mini-InternVL-Chat-2B-V1-5", 0, [Some("Mini-InternVL-Chat-2B-V1-5"), Some("OpenGVLab"), Some("Mini-InternVL"), Some("Chat"), Some("V1-5"), Some("2B")]),
    ("jondurbin/bagel-dpo-2.8b-v0.2", 0, [Some("bagel-dpo-2.8b-v0.2"), Some("jondurbin"), Some("bagel-dpo"), None, Some("v0.2"), Some("2.8B")]),
    ("voxmenthe/SFR-Iterative-DPO-LLaMA-3-8B-R-unquantized", 0, [Some("SFR-Iterative-DPO-LLaMA-3-8B-R-unquantized"), Some("voxmenthe"), Some("SFR-Iterative-DPO-LLaMA-3"), Some("R-unquantized"), None, Some("8B")]),
    ("microsoft/Florence-2-base", 0, [Some("Florence-2-base"), Some("microsoft"), None, None, None, None]),
    ("mistralai/-Mistral--Nemo-Base-2407-", 0, [Some("-Mistral--Nemo-Base-2407-"), Some("mistralai"), Some("Mistral-Nemo-Base"), None, Some("2407"), None]),
    ("Llama-3-Instruct-abliteration-LoRA-8B", 0, [Some("Llama-3-Instruct-abliteration-LoRA-8B"), None, Some("Llama-3"), Some("Instruct-abliteration-LoRA"), None, Some("8B")]),
    ("Llama-3-Instruct-abliteration-LoRA-8B", -1234, [Some("Llama-3-Instruct-abliteration-LoRA-8B"), None, Some("Llama-3"), Some("Instruct-abliteration"), None, Some("8B")]),
];

#[test]
fn model_ids_split_as_gguf_py_splits_them() {
    for (id, total, want) in ID_CASES {
        let got = model_id_components(id, *total);
        let s = |x: &Option<&str>| x.map(String::from);
        let want = IdParts {
            full_name: s(&want[0]),
            org: s(&want[1]),
            basename: s(&want[2]),
            finetune: s(&want[3]),
            version: s(&want[4]),
            size_label: s(&want[5]),
        };
        assert_eq!(got, want, "{id} ({total} parameters)");
    }
}

use kiln::gguf::{Array, Metadata, Value};
use kiln::plan::FileType;
use kiln::quantize::{self, Options};
use kiln_fixtures::checkpoint::{default_for, write_checkpoint, Arch, Vocab};
use std::path::{Path, PathBuf};

fn str(s: &str) -> Value {
    Value::Str(s.into())
}

fn strs(v: &[&str]) -> Value {
    Value::Array(Array::Str(v.iter().map(|s| s.to_string()).collect()))
}

/// gguf-py's `model_weight_count_rounded_notation(n, min_digits=2)`.
fn rounded_notation(n: u64) -> String {
    let n = n as f64;
    let (x, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let digits = format!("{}", x.round() as u64)
        .trim_start_matches('0')
        .len();
    let fix = 2usize.saturating_sub(digits);
    format!("{x:.fix$}{suffix}")
}

/// A Llama fixture checkpoint in a folder called `folder`, with `readme` as its README.md.
fn checkpoint(folder: &str, readme: Option<&str>) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("model_card")
        .join(folder);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = default_for(
        Arch::Llama,
        Vocab::LlamaSpm(crate::common::fixtures::tokenizer_model()),
    );
    write_checkpoint(&spec, &dir).unwrap();
    if let Some(r) = readme {
        std::fs::write(dir.join("README.md"), r).unwrap();
    }
    dir
}

/// The card's keys of a conversion (general.* less the ones that do not come from the card),
/// in file order, and the conversion's notes.
fn card_keys(dir: &Path) -> (Vec<(String, Value)>, u64, Vec<String>) {
    let mut o = Options::new(FileType::BF16);
    o.output = Some(dir.with_extension("gguf"));
    o.force = true;
    o.checksum = false;
    let p = quantize::prepare(dir, &o).unwrap();
    quantize::execute(&p, true, false).unwrap();
    let g = kiln::gguf::GgufFile::open(&dir.with_extension("gguf")).unwrap();
    let total: u64 = g
        .tensors()
        .iter()
        .map(|t| t.dims.iter().product::<u64>())
        .sum();
    let md: &Metadata = g.metadata();
    let keys = md
        .iter()
        .filter(|(k, _)| {
            k.starts_with("general.")
                && !matches!(
                    *k,
                    "general.architecture"
                        | "general.type"
                        | "general.file_type"
                        | "general.quantization_version"
                )
                && !k.starts_with("general.sampling.")
        })
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    (keys, total, p.notes)
}

fn check(label: &str, got: &[(String, Value)], want: &[(&str, Value)]) {
    let want: Vec<(String, Value)> = want
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    assert_eq!(got, want, "{label}: general.* keys (in order, with types)");
}

#[test]
fn qwen3_card_license_link_and_base_model() {
    let dir = checkpoint(
        "Qwen3-8B",
        Some(
            "---\nlibrary_name: transformers\nlicense: apache-2.0\nlicense_link: https://huggingface.co/Qwen/Qwen3-8B/blob/main/LICENSE\npipeline_tag: text-generation\nbase_model:\n- Qwen/Qwen3-8B-Base\n---\n\n# Qwen3-8B\n\n<a href=\"https://chat.qwen.ai/\" target=\"_blank\" style=\"margin: 2px;\">\n",
        ),
    );
    let (got, total, _) = card_keys(&dir);
    // The folder: "8B" is far from the fixture's size, so gguf-py takes it for a finetune
    // ("8b"), and the size label is the parameter count's.
    check(
        "Qwen3",
        &got,
        &[
            ("general.name", str("Qwen3 8B")),
            ("general.finetune", str("8b")),
            ("general.basename", str("Qwen3")),
            ("general.size_label", str(&rounded_notation(total))),
            ("general.license", str("apache-2.0")),
            (
                "general.license.link",
                str("https://huggingface.co/Qwen/Qwen3-8B/blob/main/LICENSE"),
            ),
            ("general.base_model.count", Value::U32(1)),
            ("general.base_model.0.name", str("Qwen3 8B Base")),
            ("general.base_model.0.organization", str("Qwen")),
            (
                "general.base_model.0.repo_url",
                str("https://huggingface.co/Qwen/Qwen3-8B-Base"),
            ),
            ("general.tags", strs(&["text-generation"])),
        ],
    );
}

#[test]
fn llama31_card_languages_tags_and_gated_fields() {
    let dir = checkpoint(
        "Llama-3.1-8B-Instruct",
        Some(concat!(
            "---\nlanguage:\n- en\n- de\n- fr\n- it\n- pt\n- hi\n- es\n- th\nlicense: llama3.1\n",
            "base_model: meta-llama/Meta-Llama-3.1-8B\npipeline_tag: text-generation\n",
            "tags:\n- facebook\n- meta\n- pytorch\n- llama\n- llama-3\n",
            "extra_gated_prompt: \"### LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\\nLlama 3.1 Version Release Date: July 23, 2024\"\n",
            "extra_gated_fields:\n  First Name: text\n  Last Name: text\n  Date of birth: date_picker\n  Country: country\n  geo: ip_location\n",
            "  By clicking Submit below I accept the terms of the license: checkbox\n",
            "extra_gated_description: The information you provide will be collected.\n",
            "extra_gated_button_content: Submit\n---\n\n## Model Information\n"
        )),
    );
    let (got, total, _) = card_keys(&dir);
    check(
        "Llama 3.1",
        &got,
        &[
            ("general.name", str("Llama 3.1 8B Instruct")),
            ("general.finetune", str("8b-Instruct")),
            ("general.basename", str("Llama-3.1")),
            ("general.size_label", str(&rounded_notation(total))),
            ("general.license", str("llama3.1")),
            ("general.base_model.count", Value::U32(1)),
            ("general.base_model.0.name", str("Meta Llama 3.1 8B")),
            ("general.base_model.0.organization", str("Meta Llama")),
            (
                "general.base_model.0.repo_url",
                str("https://huggingface.co/meta-llama/Meta-Llama-3.1-8B"),
            ),
            (
                "general.tags",
                strs(&[
                    "facebook",
                    "meta",
                    "pytorch",
                    "llama",
                    "llama-3",
                    "text-generation",
                ]),
            ),
            (
                "general.languages",
                strs(&["en", "de", "fr", "it", "pt", "hi", "es", "th"]),
            ),
        ],
    );
}

#[test]
fn gemma_card_other_license_base_model_list_and_datasets() {
    let dir = checkpoint(
        "gemma-3-1b-it",
        Some(concat!(
            "---\nlicense: other\nlicense_name: gemma-terms\nlicense_link: https://ai.google.dev/gemma/terms\n",
            "library_name: transformers\nextra_gated_heading: Access Gemma on Hugging Face\n",
            "base_model:\n- google/gemma-3-1b-pt\n- https://huggingface.co/google/gemma-3-1b-it\n",
            "datasets:\n- HuggingFaceH4/ultrachat_200k\n- https://example.org/data\n",
            "language:\n- en\n- no\ntags:\n- gemma3\n---\n"
        )),
    );
    let (got, total, _) = card_keys(&dir);
    check(
        "Gemma",
        &got,
        &[
            ("general.name", str("Gemma 3 1b It")),
            ("general.finetune", str("1b-it")),
            ("general.basename", str("gemma-3")),
            ("general.size_label", str(&rounded_notation(total))),
            ("general.license", str("other")),
            ("general.license.name", str("gemma-terms")),
            (
                "general.license.link",
                str("https://ai.google.dev/gemma/terms"),
            ),
            ("general.base_model.count", Value::U32(2)),
            ("general.base_model.0.name", str("Gemma 3 1b Pt")),
            ("general.base_model.0.organization", str("Google")),
            (
                "general.base_model.0.repo_url",
                str("https://huggingface.co/google/gemma-3-1b-pt"),
            ),
            ("general.base_model.1.name", str("Gemma 3 1b It")),
            ("general.base_model.1.organization", str("Google")),
            (
                "general.base_model.1.repo_url",
                str("https://huggingface.co/google/gemma-3-1b-it"),
            ),
            ("general.dataset.count", Value::U32(2)),
            ("general.dataset.0.name", str("Ultrachat_200K")),
            ("general.dataset.0.organization", str("HuggingFaceH4")),
            (
                "general.dataset.0.repo_url",
                str("https://huggingface.co/HuggingFaceH4/ultrachat_200k"),
            ),
            (
                "general.dataset.1.repo_url",
                str("https://example.org/data"),
            ),
            ("general.tags", strs(&["gemma3"])),
            ("general.languages", strs(&["en", "no"])),
        ],
    );
}

#[test]
fn gguf_py_heuristic_card_and_card_fields_that_override_the_folder() {
    // gguf-py's test_apply_metadata_heuristic_from_model_card card, plus llama.cpp's own
    // fields (name, size_label, version) that win over the folder's.
    let dir = checkpoint(
        "hermes-2-pro-llama-3-8b-DPO",
        Some(concat!(
            "---\nname: Hermes Pro\nsize_label: 8B\nversion: v2\n",
            "tags:\n- Llama-3\n- instruct\n- finetune\n- chatml\n- DPO\n- RLHF\n- gpt4\n- synthetic data\n- distillation\n- function calling\n- json mode\n- axolotl\n",
            "model-index:\n- name: Mixtral-8x7B-Instruct-v0.1\n  results: []\n",
            "language:\n- en\ndatasets:\n- teknium/OpenHermes-2.5\n",
            "widget:\n- example_title: Hermes 2 Pro\n  messages:\n  - role: system\n    content: You are a sentient, superintelligent artificial general intelligence.\n",
            "base_model:\n- EmbeddedLLM/Mistral-7B-Merge-14-v0\n- janai-hq/trinity-v1\n---\n"
        )),
    );
    let (got, _, _) = card_keys(&dir);
    check(
        "heuristic",
        &got,
        &[
            ("general.name", str("Hermes Pro")),
            ("general.version", str("v2")),
            ("general.finetune", str("8b-DPO")),
            ("general.basename", str("hermes-2-pro-llama-3")),
            ("general.size_label", str("8B")),
            ("general.base_model.count", Value::U32(2)),
            ("general.base_model.0.name", str("Mistral 7B Merge 14 v0")),
            ("general.base_model.0.version", str("14-v0")),
            ("general.base_model.0.organization", str("EmbeddedLLM")),
            (
                "general.base_model.0.repo_url",
                str("https://huggingface.co/EmbeddedLLM/Mistral-7B-Merge-14-v0"),
            ),
            ("general.base_model.1.name", str("Trinity v1")),
            ("general.base_model.1.version", str("v1")),
            ("general.base_model.1.organization", str("Janai Hq")),
            (
                "general.base_model.1.repo_url",
                str("https://huggingface.co/janai-hq/trinity-v1"),
            ),
            ("general.dataset.count", Value::U32(1)),
            ("general.dataset.0.name", str("OpenHermes 2.5")),
            ("general.dataset.0.version", str("2.5")),
            ("general.dataset.0.organization", str("Teknium")),
            (
                "general.dataset.0.repo_url",
                str("https://huggingface.co/teknium/OpenHermes-2.5"),
            ),
            (
                "general.tags",
                strs(&[
                    "Llama-3",
                    "instruct",
                    "finetune",
                    "chatml",
                    "DPO",
                    "RLHF",
                    "gpt4",
                    "synthetic data",
                    "distillation",
                    "function calling",
                    "json mode",
                    "axolotl",
                ]),
            ),
            ("general.languages", strs(&["en"])),
        ],
    );
}

#[test]
fn a_malformed_front_matter_is_a_warning_and_the_folder_still_names_the_model() {
    for (label, readme) in [
        (
            "unclosed",
            "---\nlicense: apache-2.0\ntags: [unclosed\n---\n",
        ),
        ("list", "---\n- just\n- a list\n---\n"),
        (
            "bad-indent",
            "---\nlicense: mit\n  base_model: x\n bad: [\n---\n",
        ),
    ] {
        let dir = checkpoint(&format!("tiny-{label}"), Some(readme));
        let (got, total, notes) = card_keys(&dir);
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("warning: ") && n.contains("README.md")),
            "{label}: no warning in {notes:?}"
        );
        // "tiny-unclosed" has no size, version or finetune part: no basename either.
        let name = match label {
            "unclosed" => "Tiny Unclosed",
            "list" => "Tiny List",
            _ => "Tiny Bad Indent",
        };
        check(
            label,
            &got,
            &[
                ("general.name", str(name)),
                ("general.size_label", str(&rounded_notation(total))),
            ],
        );
    }
    // No front matter at all: nothing from the card, no warning.
    let dir = checkpoint("plain-card", Some("# A model\n\nNo front matter here.\n"));
    let (got, total, notes) = card_keys(&dir);
    assert!(!notes.iter().any(|n| n.contains("README.md")), "{notes:?}");
    check(
        "plain",
        &got,
        &[
            ("general.name", str("Plain Card")),
            ("general.size_label", str(&rounded_notation(total))),
        ],
    );
}
