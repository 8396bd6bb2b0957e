//! tokenizer.json BPE vocabs: convert_hf_to_gguf.py's `_set_vocab_gpt2` (model "gpt2", with
//! `get_vocab_base` and the `get_vocab_base_pre` chkhsh detection of tokenizer.ggml.pre) and
//! `_set_vocab_llama_hf` (model "llama" from a byte-fallback BPE tokenizer.json).
//!
//! convert runs `transformers.AutoTokenizer`; here the `tokenizers` crate (the same Rust code
//! that backs transformers' fast tokenizers) loads tokenizer.json, and [`HfTokenizer::load`]
//! repeats the parts of AutoTokenizer's set-up that change ids or encodings: special tokens and
//! tokenizer_config's added tokens are added, and Llama/Gemma tokenizer classes rebuild the
//! post-processor from add_bos_token/add_eos_token.

use super::special::{self, read_json, SpecialVocab};
use super::token_type;
use crate::gguf::{Array, Metadata};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// The text convert_hf_to_gguf.py's `get_vocab_base_pre` tokenizes to fingerprint a BPE
/// pre-tokenizer (350 characters).
pub const CHKTXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u{200d}🌫\u{fe0f} (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 ក\u{17b6}ន\u{17cb}ត\u{17c2}ព\u{17b7}ស\u{17c1}សអ\u{17b6}ច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// `get_vocab_base_pre`'s table, in its order: (chkhsh, tokenizer.ggml.pre). The Python is a
/// chain of plain `if`s, so where a hash appears twice the later entry wins
/// ([`pre_from_hash`] does the same). Copied from llama.cpp's conversion/base.py.
pub const CHKHSH_TABLE: &[(&str, &str)] = &[
    (
        "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b",
        "chatglm-bpe",
    ), // https://huggingface.co/THUDM/glm-4-9b-chat
    (
        "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516",
        "chatglm-bpe",
    ), // https://huggingface.co/THUDM/glm-4-9b-chat
    (
        "a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2",
        "glm4",
    ), // https://huggingface.co/THUDM/glm-4-9b-hf
    (
        "9ca2dd618e8afaf09731a7cf6e2105b373ba6a1821559f258b272fe83e6eb902",
        "glm4",
    ), // https://huggingface.co/zai-org/GLM-4.5-Air
    (
        "cdf5f35325780597efd76153d4d1c16778f766173908894c04afc20108536267",
        "glm4",
    ), // https://huggingface.co/zai-org/GLM-4.7-Flash
    (
        "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35",
        "minerva-7b",
    ), // https://huggingface.co/sapienzanlp/Minerva-7B-base-v1.0
    (
        "7e57df22b1fe23a7b1e1c7f3dc4e3f96d43a4eb0836d0c6bdc3436d7b2f1c664",
        "hunyuan",
    ), // https://huggingface.co/tencent/Hunyuan-A13B-Instruct
    (
        "bba3b3366b646dbdded5dbc42d59598b849371afc42f7beafa914afaa5b70aa6",
        "hunyuan-dense",
    ), // https://huggingface.co/tencent/Hunyuan-4B-Instruct
    (
        "e6ddf9c6686791c12d698d34c31ab9be1fea9af5a3d9a6909783ab382198ae1c",
        "hy_v4",
    ), // https://huggingface.co/tencent/Hy4-preview
    (
        "a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6",
        "falcon-h1",
    ), // https://huggingface.co/tiiuae/Falcon-H1-0.5B-Base
    (
        "60476e1243776c4fb1b993dbd7a5f15ac22f83c80afdf425fa5ae01c8d44ef86",
        "falcon-h1",
    ), // https://huggingface.co/tiiuae/Falcon-H1-1B-Base
    (
        "3eda48b4c4dc7de733d1a8b3e3b4a85243dbbf704da2ee9d42c6beced8897896",
        "falcon-h1",
    ), // https://huggingface.co/tiiuae/Falcon-H1-7B-Base
    (
        "48f8e02c0359c0bbdd82f26909171fac1c18a457bb47573ed1fe3bbb2c1cfd4b",
        "falcon-h1",
    ), // https://huggingface.co/tiiuae/Falcon-H1-34B-Base
    (
        "81212dc7cdb7e0c1074ca62c5aeab0d43c9f52b8a737be7b12a777c953027890",
        "kimi-k2",
    ), // https://huggingface.co/moonshotai/Kimi-K2-Base
    (
        "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c",
        "qwen2",
    ), // https://huggingface.co/Qwen/Qwen3-Embedding-0.6B
    (
        "1444df51289cfa8063b96f0e62b1125440111bc79a52003ea14b6eac7016fd5f",
        "qwen35",
    ), // https://huggingface.co/openbmb/MiniCPM-V-4_6
    (
        "66b8d4e19ab16c3bfd89bce5d785fb7e0155e8648708a1f42077cb9fe002c273",
        "grok-2",
    ), // https://huggingface.co/alvarobartt/grok-2-tokenizer
    (
        "b3d1dd861f1d4c5c0d2569ce36baf3f90fe8a102db3de50dd71ff860d91be3df",
        "jina-v2-de",
    ), // https://huggingface.co/aari1995/German_Semantic_V3
    (
        "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4",
        "gpt-2",
    ), // https://huggingface.co/evilfreelancer/ruGPT3XL
    (
        "9e454714343b69b99b71795c1d27a68c2a1d15dab111f4d353109f966af29da7",
        "lfm2",
    ), // https://huggingface.co/LiquidAI/LFM2.5-8B-A1B
    (
        "846deafc5b0fa786186fa4ae6c7b49903cf2f1d1895bdb80b9120d60be135252",
        "gemma4",
    ), // https://huggingface.co/danish-foundation-models/DFM-Mimir
    (
        "0a766d034107bc736a3f2dc4968fd62e54a3570f1454443e0c5a4cc6bd7941ed",
        "spark2_5",
    ), // https://huggingface.co/XHToken/Spark-X2.5-1.7B
    (
        "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
        "llama-bpe",
    ), // https://huggingface.co/meta-llama/Meta-Llama-3-8B
    (
        "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754",
        "deepseek-llm",
    ), // https://huggingface.co/deepseek-ai/deepseek-llm-7b-base
    (
        "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821",
        "deepseek-coder",
    ), // https://huggingface.co/deepseek-ai/deepseek-coder-6.7b-base
    (
        "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed",
        "falcon",
    ), // https://huggingface.co/tiiuae/falcon-7b
    (
        "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f",
        "bert-bge",
    ), // https://huggingface.co/BAAI/bge-small-en-v1.5
    (
        "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e",
        "falcon3",
    ), // https://huggingface.co/tiiuae/Falcon3-7B-Base
    (
        "8e62295832751ca1e8f92f2226f403dea30dc5165e448b5bfa05af5340c64ec7",
        "bert-bge-large",
    ), // https://huggingface.co/BAAI/bge-large-zh-v1.5
    (
        "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166",
        "mpt",
    ), // https://huggingface.co/mosaicml/mpt-7b
    (
        "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34",
        "starcoder",
    ), // https://huggingface.co/bigcode/starcoder2-3b
    (
        "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454",
        "gpt-2",
    ), // https://huggingface.co/openai-community/gpt2
    (
        "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3",
        "stablelm2",
    ), // https://huggingface.co/stabilityai/stablelm-2-zephyr-1_6b
    (
        "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff",
        "refact",
    ), // https://huggingface.co/smallcloudai/Refact-1_6-base
    (
        "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8",
        "command-r",
    ), // https://huggingface.co/CohereForAI/c4ai-command-r-v01
    (
        "d772b220ace2baec124bed8cfafce0ead7d6c38a4b65ef11261cf9d5d62246d1",
        "tiny_aya",
    ), // https://huggingface.co/CohereLabs/tiny-aya-base
    (
        "52df12b4c8d4176e7481aab4b6e8454d1fd0a210a04a574f6d4e067d10e23c3e",
        "cohere2moe",
    ), // https://huggingface.co/CohereLabs/North-Mini-Code-1.0
    (
        "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea",
        "qwen2",
    ), // https://huggingface.co/Qwen/Qwen1.5-7B
    (
        "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166",
        "olmo",
    ), // https://huggingface.co/allenai/OLMo-1.7-7B-hf
    (
        "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e",
        "dbrx",
    ), // https://huggingface.co/databricks/dbrx-base
    (
        "c7699093ba4255a91e702aa38a596aa81669f3525dae06c2953267dde580f448",
        "jina-v1-en",
    ), // https://huggingface.co/jinaai/jina-reranker-v1-tiny-en
    (
        "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f",
        "jina-v2-en",
    ), // https://huggingface.co/jinaai/jina-embeddings-v2-base-en
    (
        "171aeeedd6fb548d418a7461d053f11b6f1f1fc9b387bd66640d28a4b9f5c643",
        "jina-v2-es",
    ), // https://huggingface.co/jinaai/jina-embeddings-v2-base-es
    (
        "27949a2493fc4a9f53f5b9b029c82689cfbe5d3a1929bb25e043089e28466de6",
        "jina-v2-de",
    ), // https://huggingface.co/jinaai/jina-embeddings-v2-base-de
    (
        "a023e9fdc5a11f034d3ef515b92350e56fb2af1f66c6b6811a4444ea9bf8763d",
        "jina-v5-nano",
    ), // https://huggingface.co/jinaai/jina-embeddings-v5-text-nano
    (
        "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d",
        "smaug-bpe",
    ), // https://huggingface.co/abacusai/Smaug-Llama-3-70B-Instruct
    (
        "c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360",
        "poro-chat",
    ), // https://huggingface.co/LumiOpen/Poro-34B-chat
    (
        "7967bfa498ade6b757b064f31e964dddbb80f8f9a4d68d4ba7998fcf281c531a",
        "jina-v2-code",
    ), // https://huggingface.co/jinaai/jina-embeddings-v2-base-code
    (
        "7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee",
        "viking",
    ), // https://huggingface.co/LumiOpen/Viking-7B
    (
        "b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901",
        "jais",
    ), // https://huggingface.co/core42/jais-13b
    (
        "bc5108ee1eb6a3d600cadd065f63190fbd0554dbc9e4bbd6a0d977970afc8d2a",
        "jais-2",
    ), // https://huggingface.co/inceptionai/Jais-2-8B-Chat
    (
        "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f",
        "codeshell",
    ), // https://huggingface.co/WisdomShell/CodeShell-7B
    (
        "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e",
        "tekken",
    ), // https://huggingface.co/mistralai/Mistral-Nemo-Base-2407
    (
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249",
        "smollm",
    ), // https://huggingface.co/HuggingFaceTB/SmolLM-135M
    (
        "3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7",
        "bloom",
    ), // https://huggingface.co/bigscience/bloom
    (
        "bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21",
        "gpt3-finnish",
    ), // https://huggingface.co/TurkuNLP/gpt3-finnish-small
    (
        "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae",
        "exaone",
    ), // https://huggingface.co/LGAI-EXAONE/EXAONE-3.0-7.8B-Instruct
    (
        "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085",
        "phi-2",
    ), // https://huggingface.co/microsoft/phi-2
    (
        "60824e3c0d9401f89943cbb2fff727f0e2d4c545ba4df2d6e4f09a6db0f5b450",
        "chameleon",
    ), // https://huggingface.co/facebook/chameleon-7b
    (
        "8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65",
        "roberta-bpe",
    ), // https://huggingface.co/sentence-transformers/stsb-roberta-base
    (
        "ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb",
        "gigachat",
    ), // https://huggingface.co/ai-sage/GigaChat-20B-A3B-instruct
    (
        "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1",
        "megrez",
    ), // https://huggingface.co/Infinigence/Megrez-3B-Instruct
    (
        "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5",
        "deepseek-v3",
    ), // https://huggingface.co/deepseek-ai/DeepSeek-V3
    (
        "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5",
        "deepseek-r1-qwen",
    ), // https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
    (
        "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e",
        "gpt-4o",
    ), // https://huggingface.co/Xenova/gpt-4o
    (
        "7dec86086fcc38b66b7bc1575a160ae21cf705be7718b9d5598190d7c12db76f",
        "superbpe",
    ), // https://huggingface.co/UW/OLMo2-8B-SuperBPE-t180k
    (
        "1994ffd01900cfb37395608534236ecd63f2bd5995d6cb1004dda1af50240f15",
        "trillion",
    ), // https://huggingface.co/trillionlabs/Trillion-7B-preview
    (
        "96a5f08be6259352137b512d4157e333e21df7edd3fcd152990608735a65b224",
        "bailingmoe",
    ), // https://huggingface.co/inclusionAI/Ling-lite
    (
        "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406",
        "llama4",
    ), // https://huggingface.co/meta-llama/Llama-4-Scout-17B-16E-Instruct
    (
        "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3",
        "pixtral",
    ), // https://huggingface.co/mistral-community/pixtral-12b
    (
        "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec",
        "seed-coder",
    ), // https://huggingface.co/ByteDance-Seed/Seed-Coder-8B-Base
    (
        "b0a6b1c0bd5998ebd9df08611efde34a4ff03faed45ae09c43e6b31ebd4b94cf",
        "a.x-4.0",
    ), // https://huggingface.co/skt/A.X-4.0
    (
        "f6791d196f87ce6b56a7d234be618e0d58f8cda3549416635b2bebcd22cd95c4",
        "midm-2.0",
    ), // https://huggingface.co/K-intelligence/Midm-2.0-Base-Instruct
    (
        "169bf0296a13c4d9b7672313f749eb36501d931022de052aad6e36f2bf34dd51",
        "lfm2",
    ), // https://huggingface.co/LiquidAI/LFM2.5-350M
    (
        "2085e1638f6c377a0aa4ead21b27bb4cb941bf800df86ed391011769c1758dfb",
        "exaone4",
    ), // https://huggingface.co/LGAI-EXAONE/EXAONE-4.0-32B
    (
        "a1e163ecab2e718a4c829d1148b6e86824ec36163bb71941c3dca9cd5ac25756",
        "mellum",
    ), // https://huggingface.co/JetBrains/Mellum-4b-base
    (
        "a0b64b4385f123663873756336c085744376d015ff328bb1d901598f63c44152",
        "modern-bert",
    ), // https://huggingface.co/answerdotai/ModernBERT-base
    (
        "49fc0303c9e0d2c2c565c510f64b2d9b271276acdcdadff733249eda9f7d59df",
        "afmoe",
    ), // https://huggingface.co/arcee-ai/Trinity-Tokenizer
    (
        "9b1be57e70d20d9501b2b3186e792d81181ae36ada3903c26f9fea418cf87206",
        "bailingmoe2",
    ), // https://huggingface.co/inclusionAI/Ling-mini-base-2.0
    (
        "53e325976a6e142379c19b09afcae354f2f496f147afa8f9e189a33fe4e3024e",
        "granite-docling",
    ), // https://huggingface.co/ibm-granite/granite-docling-258M
    (
        "f4f37b6c8eb9ea29b3eac6bb8c8487c5ab7885f8d8022e67edc1c68ce8403e95",
        "minimax-m2",
    ), // https://huggingface.co/MiniMaxAI/MiniMax-M2
    (
        "4a2e2abae11ca2b86d570fc5b44be4d5eb5e72cc8f22dd136a94b37da83ab665",
        "kormo",
    ), // https://huggingface.co/KORMo-Team/KORMo-tokenizer
    (
        "9d70134b369a70e5735009b6de918f7581b5211f7c074d1f89f753aea8248af1",
        "youtu",
    ), // https://huggingface.co/tencent/Youtu-LLM-2B
    (
        "16389f0a1f51ee53e562ffd51c371dc508639ab0e4261502071836e50e223e91",
        "solar-open",
    ), // https://huggingface.co/upstage/Solar-Open-100B
    (
        "6c81ce329e0802883b22eabab0d3fa48357337ef1ecb45443828bf1f6254833f",
        "exaone-moe",
    ), // https://huggingface.co/LGAI-EXAONE/K-EXAONE-236B-A23B
    (
        "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4",
        "qwen35",
    ), // https://huggingface.co/Qwen/Qwen3.5-9B-Instruct
    (
        "b4b8ca1f9769494fbd956ebc4c249de6131fb277a4a3345a7a92c7dd7a55808d",
        "joyai-llm",
    ), // https://huggingface.co/jdopensource/JoyAI-LLM-Flash
    (
        "e4d54df1ebc1f2b91acd986c5b51aa50837d5faf7c7398e73c1f9e9ee5d19869",
        "kanana2",
    ), // https://huggingface.co/kakaocorp/kanana-2-30b-a3b-instruct-2601
    (
        "862f827721df956049dff5ca81a57f29e575280bc622e290d3bf4e35eca29015",
        "f2llmv2",
    ), // https://huggingface.co/codefuse-ai/F2LLM-v2-4B
    (
        "62f6fb0a6fd5098caeabb19b07a5c1099cafc8b9c40eab6ea89ece4ec02fbc57",
        "sarvam-moe",
    ), // https://huggingface.co/sarvamai/sarvam-30b
    (
        "f728162c1315c26e40249849799b4ba3fe584c32084b4795b03eb295e63cb5af",
        "talkie",
    ), // https://huggingface.co/lewtun/talkie-1930-13b-it-hf
    (
        "36f3066e97b7f3994b379aaacde306c1444c6ae84e81a5ae3cd2b7ed3b8c42d4",
        "minicpm5",
    ), // https://huggingface.co/openbmb/MiniCPM5-1B
    (
        "f241072145675bf8322086f115aebad05e9f869557a238bf2150a2a417d1bf60",
        "granite-embed-multi-97m",
    ), // https://huggingface.co/ibm-granite/granite-embedding-97m-multilingual-r2
    (
        "789696f5946cc0fc59371f39f6097cafed196b3acded6140432f26bbb1ae1669",
        "granite-embed-multi-311m",
    ), // https://huggingface.co/ibm-granite/granite-embedding-311m-multilingual-r2
    (
        "9dcf830ee9990cdbf78cc523a5f7bd9ad8f3f9890c2d3581d2785ad10f07049d",
        "mellum2",
    ), // https://huggingface.co/JetBrains/Mellum2-12B-A2.5B-Base
    (
        "972da7b59cec44d1f0a490a86c96df53859e486e481563e5dddac155013d87ac",
        "laguna",
    ), // https://huggingface.co/poolside/Laguna-XS.2
    (
        "653660222fb704f61cbf2b618a8ae6502b7f8b20c980f9a5de07ed78e13319cd",
        "ufakzeka",
    ), // https://huggingface.co/ufakai/ufakzeka-1
];

/// The tokenizer.ggml.pre for a chkhsh, as `get_vocab_base_pre` maps it (last match wins).
pub fn pre_from_hash(chkhsh: &str) -> Option<&'static str> {
    CHKHSH_TABLE
        .iter()
        .rev()
        .find(|(h, _)| *h == chkhsh)
        .map(|(_, n)| *n)
}

/// Python's `str(list_of_ints)`.
pub fn py_list_str(ids: &[u32]) -> String {
    let mut s = String::with_capacity(ids.len() * 8 + 2);
    s.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&id.to_string());
    }
    s.push(']');
    s
}

/// `sha256(str(tokenizer.encode(chktxt)).encode()).hexdigest()`: `encode` adds special tokens
/// (the post-processor's BOS etc.), as transformers' `encode` does by default.
pub fn chkhsh(tok: &Tokenizer) -> Result<(String, Vec<u32>)> {
    let enc = tok
        .encode(CHKTXT, true)
        .map_err(|e| anyhow!("encoding the chkhsh text: {e}"))?;
    let ids = enc.get_ids().to_vec();
    let digest = Sha256::digest(py_list_str(&ids).as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, ids))
}

/// Split regexes (as written in tokenizer.json) that identify a llama.cpp pre-tokenizer, with
/// what the model must say about `ignore_merges` for llama.cpp to tokenize the same way.
const PRE_REGEXES: &[(&str, &str, bool)] = &[
    (
        "llama-bpe",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        true,
    ),
    (
        "qwen2",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        false,
    ),
    (
        "qwen35",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        false,
    ),
    (
        "gpt-4o",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        false,
    ),
    (
        "tekken",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        false,
    ),
];

/// One-line description of a tokenizer.json component (pre_tokenizer, normalizer).
fn describe(v: &Json) -> String {
    let ty = v.get("type").and_then(Json::as_str).unwrap_or("?");
    match ty {
        "Sequence" => {
            let items = v
                .get("pretokenizers")
                .or_else(|| v.get("normalizers"))
                .and_then(Json::as_array)
                .map(|l| l.iter().map(describe).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            format!("Sequence[{items}]")
        }
        "ByteLevel" => format!(
            "ByteLevel(add_prefix_space={}, use_regex={})",
            v.get("add_prefix_space")
                .and_then(Json::as_bool)
                .unwrap_or(true),
            v.get("use_regex").and_then(Json::as_bool).unwrap_or(true)
        ),
        "Split" => {
            let pat = match v.get("pattern") {
                Some(p) if p.get("Regex").is_some() => format!("Regex {}", p["Regex"]),
                Some(p) if p.get("String").is_some() => format!("String {}", p["String"]),
                _ => "?".into(),
            };
            format!(
                "Split({pat}, behavior={}, invert={})",
                v.get("behavior").and_then(Json::as_str).unwrap_or("?"),
                v.get("invert").and_then(Json::as_bool).unwrap_or(false)
            )
        }
        other => other.to_string(),
    }
}

/// Names the llama.cpp pre-tokenizer from tokenizer.json's own definition, for when the chkhsh
/// is not in llama.cpp's table. Recognizes GPT-2's plain byte-level pre-tokenizer and a Split
/// by one of the regexes llama.cpp implements followed by a regex-less ByteLevel; returns
/// (name, explanation), or an error saying what was found.
pub fn pre_from_definition(tj: &Json) -> Result<(&'static str, String)> {
    let model = tj.get("model").cloned().unwrap_or(Json::Null);
    let model_type = model.get("type").and_then(Json::as_str).unwrap_or("(none)");
    if model_type != "BPE" {
        bail!("the model is {model_type}, not BPE");
    }
    let ignore_merges = model.get("ignore_merges").is_some_and(special::truthy);
    match tj.get("normalizer") {
        None | Some(Json::Null) => {}
        Some(n) if n.get("type").and_then(Json::as_str) == Some("NFC") => {}
        Some(n) => bail!(
            "normalizer {} has no llama.cpp pre-tokenizer equivalent",
            describe(n)
        ),
    }
    let Some(pt) = tj.get("pre_tokenizer").filter(|p| !p.is_null()) else {
        bail!("there is no pre_tokenizer");
    };
    let steps: Vec<Json> = if pt.get("type").and_then(Json::as_str) == Some("Sequence") {
        pt.get("pretokenizers")
            .and_then(Json::as_array)
            .cloned()
            .unwrap_or_default()
    } else {
        vec![pt.clone()]
    };
    let found = describe(pt);
    let is = |v: &Json, t: &str| v.get("type").and_then(Json::as_str) == Some(t);
    let bl_ok = |v: &Json, want_regex: bool| {
        is(v, "ByteLevel")
            && !v
                .get("add_prefix_space")
                .and_then(Json::as_bool)
                .unwrap_or(true)
            && v.get("use_regex").and_then(Json::as_bool).unwrap_or(true) == want_regex
    };
    match steps.as_slice() {
        [bl] if bl_ok(bl, true) => {
            if ignore_merges {
                bail!("pre_tokenizer {found} is GPT-2's, but the model sets ignore_merges, which llama.cpp's gpt-2 pre-tokenizer does not");
            }
            Ok((
                "gpt-2",
                format!("pre_tokenizer {found} is GPT-2's byte-level regex"),
            ))
        }
        [split, bl] if is(split, "Split") && bl_ok(bl, false) => {
            let regex = split
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(Json::as_str);
            let behavior = split.get("behavior").and_then(Json::as_str);
            let invert = split.get("invert").and_then(Json::as_bool).unwrap_or(false);
            let Some(regex) = regex.filter(|_| behavior == Some("Isolated") && !invert) else {
                bail!("pre_tokenizer {found} is not an isolated regex Split followed by ByteLevel");
            };
            let Some(&(name, _, im)) = PRE_REGEXES.iter().find(|(_, r, _)| *r == regex) else {
                bail!("pre_tokenizer {found}: the Split regex is not one llama.cpp implements");
            };
            if im != ignore_merges {
                bail!(
                    "pre_tokenizer {found} matches llama.cpp's {name:?} regex, but the model's ignore_merges={ignore_merges} differs from what {name:?} implies ({im})"
                );
            }
            Ok((name, format!("pre_tokenizer {found}: the Split regex is llama.cpp's {name:?} one (ignore_merges={ignore_merges})")))
        }
        _ => bail!(
            "pre_tokenizer {found} matches no rule (GPT-2 ByteLevel, or regex Split + ByteLevel)"
        ),
    }
}

/// transformers tokenizer classes whose set-up differs in ways that matter here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokClass {
    /// LlamaTokenizerFast / CodeLlamaTokenizerFast: rebuilds the post-processor from
    /// add_bos_token (default true) / add_eos_token (default false).
    Llama,
    /// GemmaTokenizerFast: same post-processor rebuild.
    Gemma,
    Qwen2,
    Gpt2,
    /// PreTrainedTokenizerFast and anything else: tokenizer.json as is.
    Generic,
}

impl TokClass {
    fn from_name(name: &str) -> Self {
        match name.strip_suffix("Fast").unwrap_or(name) {
            "LlamaTokenizer" | "CodeLlamaTokenizer" => TokClass::Llama,
            "GemmaTokenizer" => TokClass::Gemma,
            "Qwen2Tokenizer" => TokClass::Qwen2,
            "GPT2Tokenizer" => TokClass::Gpt2,
            _ => TokClass::Generic,
        }
    }

    fn from_model_type(mt: &str) -> Self {
        match mt {
            "llama" | "mistral" => TokClass::Llama,
            "gemma" | "gemma2" | "gemma3" | "gemma3_text" => TokClass::Gemma,
            "qwen2" | "qwen3" | "qwen2_moe" | "qwen3_moe" => TokClass::Qwen2,
            "gpt2" => TokClass::Gpt2,
            _ => TokClass::Generic,
        }
    }

    /// The class's `__init__` defaults for (bos, eos, unk, pad).
    fn defaults(self) -> [(&'static str, Option<&'static str>); 4] {
        match self {
            TokClass::Llama => [
                ("bos_token", Some("<s>")),
                ("eos_token", Some("</s>")),
                ("unk_token", Some("<unk>")),
                ("pad_token", None),
            ],
            TokClass::Gemma => [
                ("bos_token", Some("<bos>")),
                ("eos_token", Some("<eos>")),
                ("unk_token", Some("<unk>")),
                ("pad_token", Some("<pad>")),
            ],
            TokClass::Qwen2 => [
                ("bos_token", None),
                ("eos_token", Some("<|endoftext|>")),
                ("unk_token", Some("<|endoftext|>")),
                ("pad_token", Some("<|endoftext|>")),
            ],
            TokClass::Gpt2 => [
                ("bos_token", Some("<|endoftext|>")),
                ("eos_token", Some("<|endoftext|>")),
                ("unk_token", Some("<|endoftext|>")),
                ("pad_token", None),
            ],
            TokClass::Generic => [
                ("bos_token", None),
                ("eos_token", None),
                ("unk_token", None),
                ("pad_token", None),
            ],
        }
    }
}

/// A tokenizer.json loaded the way `AutoTokenizer.from_pretrained(dir)` sets it up.
pub struct HfTokenizer {
    pub tok: Tokenizer,
    /// tokenizer.json as JSON.
    pub json: Json,
    pub path: PathBuf,
    pub class: TokClass,
    /// transformers' `all_special_tokens`, in its order.
    pub special_tokens: Vec<String>,
    /// tokenizer_config's clean_up_tokenization_spaces (transformers' default: false).
    pub clean_up_spaces: bool,
}

fn token_content(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// An AddedToken from a tokenizer_config entry (a string, or a dict with AddedToken fields).
fn added_token_from(v: &Json, special: bool) -> Option<AddedToken> {
    let content = token_content(v)?;
    let flag = |k: &str| v.get(k).and_then(Json::as_bool);
    let mut t = AddedToken::from(content, special);
    if v.is_object() {
        t = t
            .single_word(flag("single_word").unwrap_or(false))
            .lstrip(flag("lstrip").unwrap_or(false))
            .rstrip(flag("rstrip").unwrap_or(false))
            .normalized(flag("normalized").unwrap_or(!special));
    }
    Some(t)
}

impl HfTokenizer {
    /// Loads `dir/tokenizer.json` and applies AutoTokenizer's set-up from tokenizer_config.json
    /// (and config.json's model_type when tokenizer_class is absent).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            bail!(
                "{}: not found (a BPE vocab needs tokenizer.json)",
                path.display()
            );
        }
        let json = read_json(&path)?;
        let mut tok = Tokenizer::from_file(&path).map_err(|e| {
            anyhow!(
                "{}: the tokenizers library cannot load it: {e}",
                path.display()
            )
        })?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc = if tc_path.is_file() {
            read_json(&tc_path)?
        } else {
            Json::Object(Default::default())
        };
        let cfg_path = dir.join("config.json");
        let model_type = if cfg_path.is_file() {
            read_json(&cfg_path)?
                .get("model_type")
                .and_then(Json::as_str)
                .map(str::to_string)
        } else {
            None
        };
        let class = match tc.get("tokenizer_class").and_then(Json::as_str) {
            Some(n) => TokClass::from_name(n),
            None => model_type
                .as_deref()
                .map(TokClass::from_model_type)
                .unwrap_or(TokClass::Generic),
        };

        // Special token attributes: tokenizer_config's value (null = None) or the class default.
        let mut attrs: Vec<(&str, Option<Json>)> = Vec::new();
        let defaults = class.defaults();
        for key in [
            "bos_token",
            "eos_token",
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
        ] {
            let v = match tc.get(key) {
                Some(v) => Some(v.clone()).filter(|v| !v.is_null()),
                // A class default only counts when the vocab has it: transformers would add a
                // missing one as a new token, which is rarely what the checkpoint means, and
                // would push ids past vocab_size.
                None => defaults
                    .iter()
                    .find(|(k, _)| *k == key)
                    .and_then(|(_, d)| *d)
                    .filter(|d| tok.token_to_id(d).is_some())
                    .map(Json::from),
            };
            attrs.push((key, v));
        }
        let mut special_extended: Vec<Json> = attrs.iter().filter_map(|(_, v)| v.clone()).collect();
        if let Some(list) = tc.get("additional_special_tokens").and_then(Json::as_array) {
            special_extended.extend(list.iter().cloned());
        }
        let mut special_tokens: Vec<String> = Vec::new();
        for v in &special_extended {
            if let Some(c) = token_content(v) {
                if !special_tokens.contains(&c) {
                    special_tokens.push(c);
                }
            }
        }

        // Tokens transformers adds on top of tokenizer.json: tokenizer_config's
        // added_tokens_decoder entries (by id) and special tokens not already added.
        let existing: HashSet<String> = tok
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.clone())
            .collect();
        let mut to_add: Vec<AddedToken> = Vec::new();
        let mut to_add_names: HashSet<String> = HashSet::new();
        if let Some(dec) = tc.get("added_tokens_decoder").and_then(Json::as_object) {
            let mut entries: Vec<(u64, &Json)> = dec
                .iter()
                .filter_map(|(k, v)| k.trim().parse::<u64>().ok().map(|id| (id, v)))
                .collect();
            entries.sort_by_key(|(id, _)| *id);
            for (_, v) in entries {
                let special = v.get("special").is_some_and(special::truthy);
                if let Some(t) = added_token_from(v, special) {
                    if !existing.contains(&t.content) && to_add_names.insert(t.content.clone()) {
                        to_add.push(t);
                    }
                }
            }
        }
        for v in &special_extended {
            if let Some(t) = added_token_from(v, true) {
                if !existing.contains(&t.content) && to_add_names.insert(t.content.clone()) {
                    to_add.push(t);
                }
            }
        }
        for t in &mut to_add {
            t.special = t.special || special_tokens.contains(&t.content);
        }
        if !to_add.is_empty() {
            tok.add_tokens(&to_add);
        }

        if matches!(class, TokClass::Llama | TokClass::Gemma) {
            let flag = |k: &str, d: bool| tc.get(k).and_then(Json::as_bool).unwrap_or(d);
            let (add_bos, add_eos) = (flag("add_bos_token", true), flag("add_eos_token", false));
            let attr = |k: &str| {
                attrs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .and_then(|(_, v)| v.as_ref())
                    .and_then(token_content)
            };
            let unk_id = attr("unk_token").and_then(|u| tok.token_to_id(&u));
            let mut single = String::new();
            let mut specials: Vec<(String, u32)> = Vec::new();
            let mut bos_s = String::new();
            let mut eos_s = String::new();
            if add_bos {
                let bos = attr("bos_token").ok_or_else(|| {
                    anyhow!(
                        "{}: add_bos_token = True but bos_token = None",
                        tc_path.display()
                    )
                })?;
                let id = tok
                    .token_to_id(&bos)
                    .or(unk_id)
                    .ok_or_else(|| anyhow!("bos_token {bos:?} is not in the vocab"))?;
                single.push_str(&format!("{bos}:0 "));
                bos_s = bos.clone();
                specials.push((bos, id));
            }
            single.push_str("$A:0");
            if add_eos {
                let eos = attr("eos_token").ok_or_else(|| {
                    anyhow!(
                        "{}: add_eos_token = True but eos_token = None",
                        tc_path.display()
                    )
                })?;
                let id = tok
                    .token_to_id(&eos)
                    .or(unk_id)
                    .ok_or_else(|| anyhow!("eos_token {eos:?} is not in the vocab"))?;
                single.push_str(&format!(" {eos}:0"));
                eos_s = eos.clone();
                specials.push((eos, id));
            }
            let mut pair = single.clone();
            if add_bos {
                pair.push_str(&format!(" {bos_s}:1"));
            }
            pair.push_str(" $B:1");
            if add_eos {
                pair.push_str(&format!(" {eos_s}:1"));
            }
            let pp = TemplateProcessing::builder()
                .try_single(single.as_str())
                .and_then(|b| b.try_pair(pair.as_str()))
                .map_err(|e| anyhow!("building the post-processor template: {e}"))?
                .special_tokens(specials)
                .build()
                .map_err(|e| anyhow!("building the post-processor template: {e}"))?;
            tok.with_post_processor(Some(pp));
        }

        let clean_up_spaces = tc
            .get("clean_up_tokenization_spaces")
            .and_then(Json::as_bool)
            .unwrap_or(false);
        Ok(HfTokenizer {
            tok,
            json,
            path,
            class,
            special_tokens,
            clean_up_spaces,
        })
    }

    /// `tokenizer.decode(tokenizer.encode(text, add_special_tokens=False))`.
    pub fn roundtrip(&self, text: &str) -> Result<String> {
        let enc = self
            .tok
            .encode(text, false)
            .map_err(|e| anyhow!("encoding {text:?}: {e}"))?;
        let s = self
            .tok
            .decode(enc.get_ids(), false)
            .map_err(|e| anyhow!("decoding {text:?}: {e}"))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&s)
        } else {
            s
        })
    }

    /// (tokenizer.ggml.pre, one-line reason).
    pub fn detect_pre(&self) -> Result<(String, String)> {
        let (hash, _) = chkhsh(&self.tok).with_context(|| format!("{}", self.path.display()))?;
        if let Some(name) = pre_from_hash(&hash) {
            return Ok((
                name.to_string(),
                format!("chkhsh {hash} is llama.cpp's {name:?} (convert_hf_to_gguf.py table)"),
            ));
        }
        match pre_from_definition(&self.json) {
            Ok((name, why)) => Ok((name.to_string(), format!("chkhsh {hash} is not in llama.cpp's table; {why}"))),
            Err(e) => bail!(
                "{}: BPE pre-tokenizer not recognized: its chkhsh {hash} is not in llama.cpp's table (convert_hf_to_gguf.py would stop here too), and {e}",
                self.path.display()
            ),
        }
    }
}

/// transformers' `clean_up_tokenization`.
pub fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// The result of writing a BPE vocab.
#[derive(Debug)]
pub struct BpeWritten {
    pub n_tokens: usize,
    pub pre: String,
    pub pre_reason: String,
    pub warnings: Vec<String>,
}

/// convert's `get_vocab_base`: (tokens, token types) for ids 0..vocab_size.
pub fn vocab_base(
    hf: &HfTokenizer,
    vocab_size: Option<usize>,
    warnings: &mut Vec<String>,
) -> Result<(Vec<String>, Vec<i32>)> {
    let vocab = hf.tok.get_vocab(true);
    let vocab_size = vocab_size.unwrap_or(vocab.len());
    let max_id = vocab.values().copied().max().unwrap_or(0) as usize;
    if !vocab.is_empty() && max_id >= vocab_size {
        bail!(
            "{}: token id {max_id} is not below vocab_size {vocab_size} (config.json)",
            hf.path.display()
        );
    }
    let mut reverse: HashMap<u32, &str> = HashMap::with_capacity(vocab.len());
    for (t, &id) in &vocab {
        reverse.insert(id, t.as_str());
    }
    let added_dec = hf.tok.get_added_tokens_decoder();
    let added_contents: HashSet<&str> = added_dec.values().map(|t| t.content.as_str()).collect();
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for i in 0..vocab_size {
        let Some(&tok) = reverse.get(&(i as u32)) else {
            tokens.push(format!("[PAD{i}]"));
            types.push(token_type::UNUSED);
            continue;
        };
        let mut token = tok.to_string();
        if added_contents.contains(tok) {
            let at = added_dec.get(&(i as u32)).ok_or_else(|| {
                anyhow!(
                    "{}: added token {tok:?} has no entry for id {i}",
                    hf.path.display()
                )
            })?;
            if !at.normalized {
                let prev = token.clone();
                token = hf.roundtrip(&prev)?;
                if prev != token {
                    warnings.push(format!(
                        "{prev:?} is encoded and decoded back to {token:?} using the tokenizer"
                    ));
                }
            }
            if at.special || super::does_token_look_special(&token) {
                types.push(token_type::CONTROL);
            } else {
                token = token.replace('\u{2581}', " ");
                types.push(token_type::USER_DEFINED);
            }
        } else {
            types.push(token_type::NORMAL);
        }
        tokens.push(token);
    }
    Ok((tokens, types))
}

/// `_set_vocab_gpt2`: tokenizer.ggml.{model "gpt2", pre, tokens, token_type}, then SpecialVocab
/// with merges.
pub fn set_vocab_gpt2(
    dir: &Path,
    vocab_size: Option<usize>,
    md: &mut Metadata,
) -> Result<BpeWritten> {
    let hf = HfTokenizer::load(dir)?;
    let mut warnings = Vec::new();
    let (tokens, types) = vocab_base(&hf, vocab_size, &mut warnings)?;
    let (pre, pre_reason) = hf.detect_pre()?;
    let n = tokens.len();
    md.set_str("tokenizer.ggml.model", "gpt2");
    if !pre.is_empty() {
        md.set_str("tokenizer.ggml.pre", pre.clone());
    }
    super::set_array(md, "tokenizer.ggml.tokens", Array::Str(tokens));
    super::set_array(md, "tokenizer.ggml.token_type", Array::I32(types));
    let sv = SpecialVocab::load(dir, true, None, None)?;
    sv.add_to(md, &mut warnings);
    Ok(BpeWritten {
        n_tokens: n,
        pre,
        pre_reason,
        warnings,
    })
}

/// Whether `_set_vocab_llama_hf` applies, or why convert would fall through to gpt2
/// (FileNotFoundError / TypeError in LlamaHfVocab).
pub fn llama_hf_applies(dir: &Path) -> Result<std::result::Result<(), String>> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(Err("no tokenizer.json".into()));
    }
    let tj = read_json(&path)?;
    let model = tj
        .get("model")
        .ok_or_else(|| anyhow!("{}: no \"model\"", path.display()))?;
    let mtype = model.get("type").and_then(Json::as_str).unwrap_or("");
    let is_llama3 = mtype == "BPE"
        && model.get("ignore_merges").is_some_and(special::truthy)
        && !model
            .get("byte_fallback")
            .map(special::truthy)
            .unwrap_or(true);
    if is_llama3 {
        return Ok(Err(
            "tokenizer.json is a Llama 3 style BPE (ignore_merges, no byte_fallback)".into(),
        ));
    }
    let decoder = match tj.get("decoder") {
        Some(Json::Null) | None => return Ok(Err("tokenizer.json has no decoder".into())),
        Some(d) => d.get("type").and_then(Json::as_str).unwrap_or(""),
    };
    if mtype != "BPE"
        || !model.get("byte_fallback").is_some_and(special::truthy)
        || decoder != "Sequence"
    {
        return Ok(Err(format!(
            "tokenizer.json is not a Llama (byte-fallback BPE) tokenizer: model {mtype}, byte_fallback {}, decoder {decoder}",
            model.get("byte_fallback").is_some_and(special::truthy)
        )));
    }
    Ok(Ok(()))
}

/// `_set_vocab_llama_hf` (gguf-py LlamaHfVocab): model "llama", pre "default", scores -1000.
/// Call only when [`llama_hf_applies`] says so.
pub fn set_vocab_llama_hf(dir: &Path, md: &mut Metadata) -> Result<BpeWritten> {
    let hf = HfTokenizer::load(dir)?;
    let mut warnings = Vec::new();
    let vocab = hf.tok.get_vocab(true);
    let base = hf.tok.get_vocab_size(false);
    let reverse: HashMap<u32, &str> = vocab.iter().map(|(t, &id)| (id, t.as_str())).collect();
    let special_ids: HashSet<u32> = hf
        .special_tokens
        .iter()
        .filter_map(|t| vocab.get(t).copied())
        .collect();
    let is_byte = |t: &str| {
        let b = t.as_bytes();
        b.len() == 6
            && t.starts_with("<0x")
            && t.ends_with('>')
            && b[3].is_ascii_hexdigit()
            && b[4].is_ascii_hexdigit()
    };
    let mut added: Vec<(u32, String)> = hf
        .tok
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(id, _)| *id as usize >= base)
        .map(|(id, t)| (id, t.content))
        .collect();
    added.sort_by_key(|(id, _)| *id);

    let mut tokens = Vec::with_capacity(base + added.len());
    let mut types = Vec::with_capacity(base + added.len());
    for id in 0..base as u32 {
        let t = reverse
            .get(&id)
            .ok_or_else(|| anyhow!("{}: no token with id {id}", hf.path.display()))?;
        types.push(if is_byte(t) {
            token_type::BYTE
        } else if special_ids.contains(&id) {
            token_type::CONTROL
        } else {
            token_type::NORMAL
        });
        tokens.push(t.to_string());
    }
    for (_, text) in added {
        types.push(if hf.special_tokens.contains(&text) {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        });
        tokens.push(text);
    }
    let n = tokens.len();
    let scores = vec![-1000.0f32; n];
    md.set_str("tokenizer.ggml.model", "llama");
    md.set_str("tokenizer.ggml.pre", "default");
    super::set_array(md, "tokenizer.ggml.tokens", Array::Str(tokens));
    super::set_array(md, "tokenizer.ggml.scores", Array::F32(scores));
    super::set_array(md, "tokenizer.ggml.token_type", Array::I32(types));
    let sv = SpecialVocab::load(dir, false, None, Some(n))?;
    sv.add_to(md, &mut warnings);
    Ok(BpeWritten {
        n_tokens: n,
        pre: "default".into(),
        pre_reason:
            "Llama byte-fallback BPE tokenizer.json (LlamaHfVocab): convert writes \"default\""
                .into(),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Value;
    use serde_json::json;
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{DecoderWrapper, ModelWrapper, PostProcessorWrapper, PreTokenizerWrapper};

    const SENTENCES: &[&str] = &[
        "The quick brown fox jumps over the lazy dog.",
        "A kiln fires clay into stoneware at high temperature.",
        "Tokenizers split text into pieces; merges join frequent pairs.",
        "the the the quick quick fox fox fox dog dog",
        "Hello world! Hello again, world. 12345 67890",
    ];

    /// Trains a small byte-level BPE (deterministic: the corpus and settings are fixed) and
    /// saves it as dir/tokenizer.json. Returns the trained vocab size.
    fn train_byte_level(dir: &Path) -> usize {
        let mut tok = Tokenizer::new(ModelWrapper::BPE(BPE::default()));
        let bl = ByteLevel::default().add_prefix_space(false);
        tok.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(bl)));
        tok.with_decoder(Some(DecoderWrapper::ByteLevel(bl)));
        tok.with_post_processor(Some(PostProcessorWrapper::ByteLevel(bl)));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(300)
            .min_frequency(2)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
            .build()
            .into();
        tok.train(&mut trainer, SENTENCES.iter()).unwrap();
        tok.save(dir.join("tokenizer.json"), true).unwrap();
        tok.get_vocab_size(true)
    }

    fn edit_json(path: &Path, f: impl FnOnce(&mut Json)) {
        let mut j = read_json(path).unwrap();
        f(&mut j);
        std::fs::write(path, serde_json::to_string(&j).unwrap()).unwrap();
    }

    fn strs(md: &Metadata, key: &str) -> Vec<String> {
        match md.get(key) {
            Some(Value::Array(Array::Str(v))) => v.clone(),
            other => panic!("{key}: {other:?}"),
        }
    }

    fn i32s(md: &Metadata, key: &str) -> Vec<i32> {
        match md.get(key) {
            Some(Value::Array(Array::I32(v))) => v.clone(),
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn chktxt_and_table() {
        assert_eq!(CHKTXT.chars().count(), 350);
        let h: String = Sha256::digest(CHKTXT.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // sha256 of the Python chktxt string's UTF-8 bytes.
        assert_eq!(
            h,
            "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"
        );
        assert_eq!(py_list_str(&[]), "[]");
        assert_eq!(py_list_str(&[1, 22, 333]), "[1, 22, 333]");
        assert_eq!(CHKHSH_TABLE.len(), 97);
        assert!(CHKHSH_TABLE.iter().all(|(h, n)| h.len() == 64
            && h.bytes().all(|b| b.is_ascii_hexdigit())
            && !n.is_empty()));
        assert_eq!(
            pre_from_hash("0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"),
            Some("llama-bpe")
        );
        // Plain `if` chain in Python: the later duplicate wins.
        assert_eq!(
            pre_from_hash("0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f"),
            Some("jina-v2-en")
        );
        assert_eq!(
            pre_from_hash("b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166"),
            Some("olmo")
        );
        assert_eq!(pre_from_hash("00"), None);
    }

    #[test]
    fn trained_byte_level_bpe() {
        let d = tempfile::tempdir().unwrap();
        let n = train_byte_level(d.path());
        assert!(n > 257 && n <= 300, "{n}");
        std::fs::write(
            d.path().join("tokenizer_config.json"),
            json!({"eos_token": "<|endoftext|>", "bos_token": null}).to_string(),
        )
        .unwrap();

        let mut md = Metadata::new();
        let info = crate::tokenizer::write_vocab(
            d.path(),
            crate::tokenizer::VocabRecipe::SentencePieceElseBpe,
            None,
            &mut md,
        )
        .unwrap();
        assert_eq!(info.model, "gpt2");
        assert_eq!(info.pre.as_deref(), Some("gpt-2"));
        assert!(
            info.pre_reason.contains("not in llama.cpp's table")
                && info.pre_reason.contains("ByteLevel"),
            "{}",
            info.pre_reason
        );
        assert_eq!(info.n_tokens, n);
        let keys: Vec<&str> = md.iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "tokenizer.ggml.model",
                "tokenizer.ggml.pre",
                "tokenizer.ggml.tokens",
                "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges",
                "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.add_eos_token"
            ]
        );
        let tokens = strs(&md, "tokenizer.ggml.tokens");
        let types = i32s(&md, "tokenizer.ggml.token_type");
        // The special token was trained in first: id 0, CONTROL; the rest NORMAL.
        assert_eq!(
            (tokens[0].as_str(), types[0]),
            ("<|endoftext|>", token_type::CONTROL)
        );
        assert!(types[1..].iter().all(|&t| t == token_type::NORMAL));
        assert_eq!(md.get("tokenizer.ggml.eos_token_id"), Some(&Value::U32(0)));

        // Merges in "a b" form, equal to the model's merges in order.
        let merges = strs(&md, "tokenizer.ggml.merges");
        let tj = read_json(&d.path().join("tokenizer.json")).unwrap();
        let want: Vec<String> = tj["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| match m {
                Json::String(s) => s.clone(),
                Json::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
                _ => panic!(),
            })
            .collect();
        assert!(!merges.is_empty());
        assert_eq!(merges, want);
        assert!(merges.iter().all(|m| m.split(' ').count() == 2));
        // Every merge's result is in the vocab (byte-level strings, "Ġ" for space).
        assert!(merges.iter().any(|m| m.starts_with('Ġ')));

        // The other merges form gives the same metadata.
        let form_pairs = tj["model"]["merges"][0].is_array();
        edit_json(&d.path().join("tokenizer.json"), |j| {
            let m: Vec<Json> = want
                .iter()
                .map(|s| {
                    let (a, b) = s.split_once(' ').unwrap();
                    if form_pairs {
                        json!(format!("{a} {b}"))
                    } else {
                        json!([a, b])
                    }
                })
                .collect();
            j["model"]["merges"] = Json::Array(m);
        });
        let mut md2 = Metadata::new();
        crate::tokenizer::write_vocab(
            d.path(),
            crate::tokenizer::VocabRecipe::SentencePieceElseBpe,
            None,
            &mut md2,
        )
        .unwrap();
        assert_eq!(md, md2);

        // Padding to config's vocab_size; llama arch falls through to gpt2 (not a byte-fallback BPE).
        let mut md3 = Metadata::new();
        let info = crate::tokenizer::write_vocab(
            d.path(),
            crate::tokenizer::VocabRecipe::LlamaSetVocab,
            Some(n + 2),
            &mut md3,
        )
        .unwrap();
        assert_eq!(info.model, "gpt2");
        assert!(
            info.pre_reason.contains("LlamaHfVocab does not apply"),
            "{}",
            info.pre_reason
        );
        let tokens = strs(&md3, "tokenizer.ggml.tokens");
        assert_eq!(tokens.len(), n + 2);
        assert_eq!(tokens[n + 1], format!("[PAD{}]", n + 1));
        assert_eq!(
            i32s(&md3, "tokenizer.ggml.token_type")[n],
            token_type::UNUSED
        );

        // vocab_size below the largest id: error naming tokenizer.json.
        let e = format!(
            "{:#}",
            crate::tokenizer::write_vocab(
                d.path(),
                crate::tokenizer::VocabRecipe::SentencePieceElseBpe,
                Some(10),
                &mut Metadata::new()
            )
            .unwrap_err()
        );
        assert!(
            e.contains("tokenizer.json") && e.contains("vocab_size"),
            "{e}"
        );
    }

    /// AutoTokenizer set-up: Llama tokenizer classes rebuild the post-processor (BOS in the
    /// chkhsh encoding), tokenizer_config's added_tokens_decoder adds tokens, and non-special
    /// added tokens become USER_DEFINED with ▁ read as a space.
    #[test]
    fn auto_tokenizer_setup() {
        let d = tempfile::tempdir().unwrap();
        let n = train_byte_level(d.path());
        let tc = d.path().join("tokenizer_config.json");
        std::fs::write(&tc, json!({"bos_token": "<|endoftext|>"}).to_string()).unwrap();
        let (_, ids) = chkhsh(&HfTokenizer::load(d.path()).unwrap().tok).unwrap();
        assert_ne!(ids[0], 0);
        std::fs::write(
            &tc,
            json!({
                "tokenizer_class": "LlamaTokenizerFast", "bos_token": "<|endoftext|>", "add_bos_token": true,
                "added_tokens_decoder": {
                    (n).to_string(): {"content": "\u{2581}hi", "special": false, "normalized": false},
                    (n + 1).to_string(): {"content": "<|im_end|>", "special": false, "normalized": false}
                }
            })
            .to_string(),
        )
        .unwrap();
        let hf = HfTokenizer::load(d.path()).unwrap();
        assert_eq!(hf.class, TokClass::Llama);
        let (_, ids) = chkhsh(&hf.tok).unwrap();
        assert_eq!(ids[0], 0, "BOS from the rebuilt post-processor");
        let mut w = Vec::new();
        let (tokens, types) = vocab_base(&hf, None, &mut w).unwrap();
        assert_eq!(tokens.len(), n + 2);
        assert_eq!(
            (tokens[n].as_str(), types[n]),
            (" hi", token_type::USER_DEFINED)
        );
        // Not special, but looks special.
        assert_eq!(
            (tokens[n + 1].as_str(), types[n + 1]),
            ("<|im_end|>", token_type::CONTROL)
        );
    }

    #[test]
    fn unknown_pre_tokenizer_fails_naming_file() {
        let d = tempfile::tempdir().unwrap();
        train_byte_level(d.path());
        edit_json(&d.path().join("tokenizer.json"), |j| {
            j["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\d+|\\w+"}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
            ]});
        });
        let mut md = Metadata::new();
        let e = format!(
            "{:#}",
            crate::tokenizer::write_vocab(
                d.path(),
                crate::tokenizer::VocabRecipe::SentencePieceElseBpe,
                None,
                &mut md
            )
            .unwrap_err()
        );
        assert!(e.contains("tokenizer.json"), "{e}");
        assert!(
            e.contains("not recognized") && e.contains("Split(Regex"),
            "{e}"
        );
    }

    #[test]
    fn definition_rules() {
        let llama3 = PRE_REGEXES[0].1;
        let split_bl = |re: &str| {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
            ]})
        };
        let tj = |pt: Json, im: bool, norm: Json| json!({"normalizer": norm, "pre_tokenizer": pt, "model": {"type": "BPE", "ignore_merges": im}});
        assert_eq!(
            pre_from_definition(&tj(split_bl(llama3), true, Json::Null))
                .unwrap()
                .0,
            "llama-bpe"
        );
        assert_eq!(
            pre_from_definition(&tj(
                split_bl(PRE_REGEXES[1].1),
                false,
                json!({"type": "NFC"})
            ))
            .unwrap()
            .0,
            "qwen2"
        );
        assert_eq!(
            pre_from_definition(&tj(split_bl(PRE_REGEXES[2].1), false, Json::Null))
                .unwrap()
                .0,
            "qwen35"
        );
        let gpt2 = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        assert_eq!(
            pre_from_definition(&tj(gpt2.clone(), false, Json::Null))
                .unwrap()
                .0,
            "gpt-2"
        );
        // Mismatches are errors that say what was found.
        let e = pre_from_definition(&tj(split_bl(llama3), false, Json::Null))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ignore_merges"), "{e}");
        let e = pre_from_definition(&tj(gpt2, false, json!({"type": "Lowercase"})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Lowercase"), "{e}");
        let e = pre_from_definition(&tj(
            json!({"type": "Metaspace", "replacement": "▁"}),
            false,
            Json::Null,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("Metaspace"), "{e}");
        let e = pre_from_definition(&json!({"model": {"type": "Unigram"}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Unigram"), "{e}");
    }

    /// A Llama 2 style byte-fallback BPE tokenizer.json goes through `_set_vocab_llama_hf`.
    #[test]
    fn llama_hf_path() {
        let d = tempfile::tempdir().unwrap();
        let mut vocab = serde_json::Map::new();
        for (i, t) in [
            "<unk>",
            "<s>",
            "</s>",
            "<0x0A>",
            "\u{2581}a",
            "b",
            "\u{2581}ab",
        ]
        .iter()
        .enumerate()
        {
            vocab.insert(t.to_string(), json!(i));
        }
        let tj = json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 7, "content": "<tool>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}
            ],
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": null,
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
            "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": true, "byte_fallback": true, "vocab": vocab, "merges": ["▁a b"]}
        });
        std::fs::write(d.path().join("tokenizer.json"), tj.to_string()).unwrap();
        std::fs::write(
            d.path().join("tokenizer_config.json"),
            json!({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true, "add_eos_token": false}).to_string(),
        )
        .unwrap();
        let mut md = Metadata::new();
        let info = crate::tokenizer::write_vocab(
            d.path(),
            crate::tokenizer::VocabRecipe::LlamaSetVocab,
            Some(32000),
            &mut md,
        )
        .unwrap();
        assert_eq!(
            (info.model.as_str(), info.pre.as_deref(), info.n_tokens),
            ("llama", Some("default"), 8)
        );
        assert_eq!(
            strs(&md, "tokenizer.ggml.tokens"),
            [
                "<unk>",
                "<s>",
                "</s>",
                "<0x0A>",
                "\u{2581}a",
                "b",
                "\u{2581}ab",
                "<tool>"
            ]
        );
        assert_eq!(
            i32s(&md, "tokenizer.ggml.token_type"),
            [3, 3, 3, 6, 1, 1, 1, 4]
        );
        assert_eq!(
            md.get("tokenizer.ggml.scores"),
            Some(&Value::Array(Array::F32(vec![-1000.0; 8])))
        );
        assert_eq!(md.get("tokenizer.ggml.bos_token_id"), Some(&Value::U32(1)));
        assert_eq!(
            md.get("tokenizer.ggml.add_bos_token"),
            Some(&Value::Bool(true))
        );
    }

    fn llama_cpp_models() -> Option<PathBuf> {
        let candidates = [
            std::env::var("KILN_LLAMA_CPP_MODELS")
                .ok()
                .map(PathBuf::from),
            Some(PathBuf::from(
                "/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/models",
            )),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|p| p.join("ggml-vocab-gpt-2.gguf").is_file())
    }

    /// Rebuilds a tokenizer.json from one of llama.cpp's ggml-vocab-*.gguf files (tokens,
    /// merges, CONTROL tokens as special added tokens) with the given pre-tokenizer set-up.
    fn rebuild(
        models: &Path,
        name: &str,
        dir: &Path,
        pre_tokenizer: Json,
        normalizer: Json,
        post: Json,
        ignore_merges: bool,
    ) {
        let f =
            crate::gguf::GgufFile::open(&models.join(format!("ggml-vocab-{name}.gguf"))).unwrap();
        let md = f.metadata();
        let tokens = strs(md, "tokenizer.ggml.tokens");
        let types = i32s(md, "tokenizer.ggml.token_type");
        let merges = strs(md, "tokenizer.ggml.merges");
        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            match *ty {
                token_type::NORMAL => {
                    vocab.insert(t.clone(), json!(i));
                }
                token_type::CONTROL => {
                    vocab.insert(t.clone(), json!(i));
                    added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
                }
                _ => {}
            }
        }
        let tj = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added, "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}
        });
        std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    }

    /// llama.cpp's expected tokenizations (ggml-vocab-*.gguf.inp/.out, made with the HF
    /// tokenizers, no special tokens) against the rebuilt tokenizer.json.
    fn check_inp_out(models: &Path, name: &str, tok: &Tokenizer) -> usize {
        let inp =
            std::fs::read_to_string(models.join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
        let out =
            std::fs::read_to_string(models.join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
        let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
        let texts = &texts[..texts.len() - 1];
        let outs: Vec<&str> = out.lines().collect();
        assert_eq!(texts.len(), outs.len());
        for (t, o) in texts.iter().zip(&outs) {
            let want: Vec<u32> = o.split_whitespace().map(|x| x.parse().unwrap()).collect();
            let got = tok.encode(*t, false).unwrap().get_ids().to_vec();
            assert_eq!(got, want, "{name}: {t:?}");
        }
        texts.len()
    }

    /// Cross-check against llama.cpp's own vocab files: rebuilt GPT-2, Llama 3 and Qwen2
    /// tokenizer.json files tokenize llama.cpp's test texts as expected, and their chkhsh maps
    /// to the pre-tokenizer those files carry. Skipped when llama.cpp's models/ is absent.
    #[test]
    fn chkhsh_matches_llama_cpp_vocabs() {
        let Some(models) = llama_cpp_models() else {
            eprintln!("skipped: llama.cpp models/ not found (set KILN_LLAMA_CPP_MODELS)");
            return;
        };
        let bl = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let split = |i: usize| {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": PRE_REGEXES[i].1}, "behavior": "Isolated", "invert": false}, bl(false)]})
        };
        let bos_template = json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]}}});
        let cases = [
            ("gpt-2", bl(true), Json::Null, bl(true), false),
            ("llama-bpe", split(0), Json::Null, bos_template, true),
            ("qwen2", split(1), json!({"type": "NFC"}), bl(false), false),
        ];
        for (name, pt, norm, post, im) in cases {
            let d = tempfile::tempdir().unwrap();
            rebuild(&models, name, d.path(), pt, norm, post, im);
            let hf = HfTokenizer::load(d.path()).unwrap();
            let n = check_inp_out(&models, name, &hf.tok);
            let (pre, reason) = hf.detect_pre().unwrap();
            eprintln!("{name}: {n} llama.cpp test texts tokenized alike; pre {pre:?}: {reason}");
            assert_eq!(pre, name, "{reason}");
            assert!(reason.contains("llama.cpp's"), "{reason}");
            assert!(!reason.contains("not in"), "hash did not match: {reason}");
        }
    }
}
