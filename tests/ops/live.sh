# shellcheck shell=bash
# Live stage of tests/ops/run.sh (sourced): placeholder until written.
live_stage() { :; }
