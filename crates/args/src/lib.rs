//! LLaMA-Factory argument groups and config parsing (modules land in the following commits).
