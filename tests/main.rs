//! kiln's integration tests, one binary (llama.cpp is linked once): bit-exactness against ggml,
//! conversions checked against llama.cpp, the runner end to end, bad input, mutations.

mod common;

mod bad_input;
mod bench;
mod budget;
mod budget_pins;
mod calibrate;
mod cli;
mod convert_vs_llama;
mod converter_only;
mod ernie;
mod eval;
mod fp8;
mod glm4moe;
mod gptoss;
mod imatrix;
mod imatrix_moe;
mod kernels_match_ggml;
mod model_card;
mod moe;
mod mutations;
mod quantize_options;
mod reference_forward;
mod search;
mod split;
mod sweep;
mod sweep_jobs;
mod tensor_order;
