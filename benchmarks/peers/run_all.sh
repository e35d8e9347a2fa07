#!/bin/bash
# The peer comparison: the same models in tfp_flows, stock TFP, FlowJAX, normflows, zuko, nflows and
# torchdiffeq, timed one after another on this machine (run it alone: 2 cores, ~16 minutes).
# Usage: PEERS=<dir with venvs tfv, tv, jv (see setup_venvs.sh)> OUT=<output dir> bash run_all.sh
# Writes OUT/results.jsonl, OUT/logs/*.log and OUT/summary.md (ours vs the best peer, ratios).
here=$(cd "$(dirname "$0")" && pwd)
: "${PEERS:?set PEERS to the folder made by setup_venvs.sh}"
PEERS=$(cd "$PEERS" && pwd); OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT/logs"; OUT=$(cd "$OUT" && pwd)
export BENCH_OUT=$OUT/results.jsonl TF_CPP_MIN_LOG_LEVEL=2 RUN_ID=${RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)}
export DIGITS_NPY=${DIGITS_NPY:-$PEERS/digits.npy}
TF=$PEERS/tfv/bin/python; PT=$PEERS/tv/bin/python; JX=$PEERS/jv/bin/python
[[ -f $DIGITS_NPY ]] || $TF "$here/make_data.py" "$DIGITS_NPY"
cd "$here"
one() {  # one LOG BENCH FRAMEWORK MODE TIMEOUT_S CMD...: a case that prints no RESULT line gets an error record
  local name=$1 log=$OUT/logs/$1.log b=$2 fw=$3 mode=$4 t=$5; shift 5
  timeout "$t" "$@" > "$log" 2>&1; local rc=$?
  grep -q '^RESULT ' "$log" || echo "{\"bench\": \"$b\", \"framework\": \"$fw\", \"mode\": \"$mode\", \"run_id\": \"$RUN_ID\", \"error\": \"no result: exit $rc, see logs/$1.log\"}" >> "$BENCH_OUT"
  echo "$(date -u +%T) $name rc=$rc" | tee -a "$OUT/logs/progress.log"
}
for fw in numpy tf; do $TF matmul_peak.py $fw > "$OUT/logs/matmul_$fw.log" 2>&1; done
$PT matmul_peak.py torch > "$OUT/logs/matmul_torch.log" 2>&1
for m in nsf2d nsf64 glow; do for mode in fn xla; do one tf_${m}_${mode} $m tfp $mode 900 $TF tf_bench.py $m $mode; done; done
NFE=1 one tf_ffjord2d_fn ffjord2d tfp fn 900 $TF tf_bench.py ffjord2d fn
for m in nsf2d nsf64 glow glowl res2d res64 ffjord2d tarflow; do for mode in fn xla fit fit_spe; do
  one tff_${m}_${mode} $m tfp_flows $mode 900 $TF tfpflows_bench.py $m $mode
done; done
for mode in fn xla; do FFJORD_FIELD=concat_squash one tff_ffjord2d_${mode}_concat_squash ffjord2d tfp_flows $mode-concat_squash 900 $TF tfpflows_bench.py ffjord2d $mode; done
for m in nsf2d nsf64; do for lib in normflows zuko nflows; do one pt_${m}_${lib} $m $lib eager 900 $PT torch_bench.py $m $lib; done; done
one pt_glow glow normflows eager 900 $PT torch_bench.py glow normflows
one pt_res2d res2d normflows eager 900 $PT torch_bench.py res2d normflows
one pt_res64 res64 normflows eager 900 $PT torch_bench.py res64 normflows
one pt_ffjord2d ffjord2d torchdiffeq eager 900 $PT torch_bench.py ffjord2d torchdiffeq
$JX matmul_peak.py jax > "$OUT/logs/matmul_jax.log" 2>&1
for m in nsf2d nsf64; do one jax_$m $m flowjax jit 600 $JX jax_bench.py $m; done
python3 summarize.py "$BENCH_OUT" > "$OUT/summary.md"
echo "tables: $OUT/summary.md"
