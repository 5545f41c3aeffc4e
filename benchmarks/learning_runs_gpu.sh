#!/usr/bin/env bash
# The four benchmarks' GPU learning runs (issue 17), each resumable across device calls.
#
#   source benchmarks/gpu_setup.sh
#   BUDGET=540 bash benchmarks/learning_runs_gpu.sh RUN [RUN...]
#   # RUN: gsm8k | gsm8k_lora | gsm8k_lr1e5 | sst2 | nq | nq_lr2e5 | nq_g16 | nq_fixed | nq_lr3e6 | nq_drgrpo | mbpp | mbpp_g16 | mbpp_g16_lr5e6 | humaneval (Qwen) | smol_sst2 | smol_nq | ablations (SmolLM2)
#
# Each RUN is benchmarks/learning_run.sh with the flags below (the same call again resumes it from its
# last checkpoint; a finished run only re-packs its results). Model: Qwen2.5-Coder-0.5B-Instruct, the
# Q4_K_M GGUF staged as /root/models/qwen.gguf (../shared/tools/fetch-qwen-coder). Every evaluation is
# greedy on a held-out split training never reads, at the generous budgets below (GSM8K_EVAL etc.): the
# base-model evaluations of these runs are what set each config's own budget (>= 95% of answers finish). Run folders are named
# qwen_<run>_$CARD (CARD: h100 or h200, from nvidia-smi unless set). `humaneval` evaluates the MBPP run's
# weights (before = the base model) on HumanEval, also without the items MBPP nearly copies.
# The smol_* runs and the ablations use SmolLM2-135M-Instruct staged as /root/models/smol.gguf
# (../shared/models). `ablations` is benchmarks/ablations.py on the demo's SST-2 setting: the base model
# scores about 51% and 12 steps of 4 x 8 take it to about 88% on a CPU, so an arm's effect can show in a
# run of about a minute of GPU work; rl.mu=2 so that the clip ranges act. PARALLEL runs at a time on the
# one GPU (default 1), resumable like the rest. Measured 2026-12-06 on an H100, one at a time: 40 s per
# run (231 s for the first, which fills the compilation cache), all 24 in three calls of BUDGET=520-565.
# Measured 2026-12-05 on an H100: 6 ablation runs plus
# smol_sst2 and smol_nq at once (8 processes, 16 cores) each spent 4 minutes on the first 64 items of the
# evaluation before training, and nothing finished in 500 s. Not profiled; most likely compiling (every
# shape compiles once per process, and 8 processes compiling share 16 cores). Untested: whether 2 at a
# time beats 1; run seed 0 of one arm alone first.
# GPU_SHARE=k: this process is one of k runs on the card at once: it takes a fixed 0.9/k of the card's
# memory up front (JAX's preallocated pool) instead of growing a pool without preallocation, which
# fragments (on 2026-12-07 the fifth process on an H200 ran out of memory at its first update).
set -uo pipefail
if [[ -n ${GPU_SHARE:-} ]]; then
  export XLA_PYTHON_CLIENT_PREALLOCATE=true
  XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9 / ${GPU_SHARE}, 3))") || exit 2
  export XLA_PYTHON_CLIENT_MEM_FRACTION
fi
M=/root/models/qwen.gguf
S=/root/models/smol.gguf
card=${CARD:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -o 'H[0-9][0-9]*' | head -1 | tr H h)}
card=${card:-cpu}
common=(--config.model.path=$M --config.train.eval_every=0 --config.train.export_hf=False)
for run in "$@"; do
  case $run in
    gsm8k)  # 120 steps of 32 prompts x 8
      bash benchmarks/learning_run.sh qwen_gsm8k_$card --config=configs/gsm8k.py "${common[@]}" \
        --config.data.path=/root/data/gsm8k --config.data.eval_limit=1319 \
        --config.sampling.max_new_tokens=512 --config.sampling.eval_max_new_tokens=${GSM8K_EVAL:-1024} \
        --config.rl.prompts_per_step=32 --config.optim.micro_batches=8 --config.optim.learning_rate=3e-6 \
        --config.train.steps=${GSM8K_STEPS:-120} --config.train.checkpoint_every=20 ;;
    gsm8k_lora)  # the gsm8k run with rank-64 LoRA adapters on every projection (only they train) at a
      # LoRA learning rate: checkpoints hold the adapters alone; export_hf stays off as in `common`
      bash benchmarks/learning_run.sh qwen_gsm8k_lora_$card --config=configs/gsm8k.py "${common[@]}" \
        --config.data.path=/root/data/gsm8k --config.data.eval_limit=1319 \
        --config.sampling.max_new_tokens=512 --config.sampling.eval_max_new_tokens=${GSM8K_EVAL:-1024} \
        --config.rl.prompts_per_step=32 --config.optim.micro_batches=8 --config.optim.learning_rate=2e-5 \
        --config.model.lora.rank=64 --config.model.lora.alpha=64 \
        --config.train.steps=${GSM8K_LORA_STEPS:-60} --config.train.checkpoint_every=20 ;;
    sst2)  # SST-2 (the local IMDb sample is too small to hold out enough): 20% of 872 held out
      bash benchmarks/learning_run.sh qwen_sst2_$card --config=configs/quickstart.py "${common[@]}" \
        --config.model.dtype=bfloat16 --config.data.path=/root/data/sst2 --config.data.eval_limit=1000 \
        --config.sampling.eval_max_new_tokens=${SST2_EVAL:-64} \
        --config.rl.prompts_per_step=16 --config.optim.micro_batches=1 --config.optim.learning_rate=3e-6 \
        --config.train.steps=60 --config.train.checkpoint_every=20 ;;
    nq)
      bash benchmarks/learning_run.sh qwen_nq_$card --config=configs/nq.py "${common[@]}" \
        --config.data.path=/root/data/nq_open --config.data.eval_limit=1000 \
        --config.sampling.eval_max_new_tokens=${NQ_EVAL:-128} \
        --config.rl.prompts_per_step=32 --config.optim.micro_batches=4 --config.optim.learning_rate=3e-6 \
        --config.train.steps=100 --config.train.checkpoint_every=25 ;;
    nq_lr2e5)  # the nq run at a 7x higher learning rate: at 3e-6 the policy did not move (2026-12-06)
      bash benchmarks/learning_run.sh qwen_nq_lr2e5_$card --config=configs/nq.py "${common[@]}" \
        --config.data.path=/root/data/nq_open --config.data.eval_limit=1000 \
        --config.sampling.eval_max_new_tokens=${NQ_EVAL:-128} \
        --config.rl.prompts_per_step=32 --config.optim.micro_batches=4 --config.optim.learning_rate=2e-5 \
        --config.train.steps=100 --config.train.checkpoint_every=25 ;;
    nq_g16)  # groups of 16 (more groups with a non-zero advantage when most answers score 0) at lr 1e-5
      bash benchmarks/learning_run.sh qwen_nq_g16_$card --config=configs/nq.py "${common[@]}" \
        --config.data.path=/root/data/nq_open --config.data.eval_limit=1000 \
        --config.sampling.eval_max_new_tokens=${NQ_EVAL:-128} --config.rl.group_size=16 \
        --config.rl.prompts_per_step=32 --config.optim.micro_batches=8 --config.optim.learning_rate=1e-5 \
        --config.train.steps=100 --config.train.checkpoint_every=25 ;;
    nq_fixed)  # the nq run after the fix of its non-finite gradients: every update of nq / nq_lr2e5 / nq_g16
      # was skipped (cuDNN's flash backward at 128 + 64 slots; the cuDNN path now pads to whole 128-slot
      # tiles, benchmarks/results/nonfinite/). remat none, lr 1e-5 (NQ_LR to change it)
      bash benchmarks/learning_run.sh qwen_nq_fixed_$card --config=configs/nq.py "${common[@]}" \
        --config.data.path=/root/data/nq_open --config.data.eval_limit=1000 \
        --config.sampling.eval_max_new_tokens=${NQ_EVAL:-128} \
        --config.rl.prompts_per_step=32 --config.optim.micro_batches=4 --config.optim.learning_rate=${NQ_LR:-1e-5} \
        --config.train.steps=100 --config.train.checkpoint_every=25 ;;
    nq_lr3e6|nq_drgrpo)  # after nq_fixed degenerated at lr 1e-5 (2026-12-07, H100: entropy 1.9 -> 0.2 in
      # 10 steps, every answer 64 tokens of junk from step 32): lr 3e-6, the first NQ run's, which never applied
      # before (every update of qwen_nq_h100 was skipped), and with it Dr.GRPO's unscaled advantages: with
      # 84-97% of groups all zero from step 11 on, GRPO's division by the group std turns one answer's F1 of 0.1 into an
      # advantage as large as a right answer's
      adv=grpo; [[ $run == nq_drgrpo ]] && adv=dr_grpo
      bash benchmarks/learning_run.sh qwen_${run}_$card --config=configs/nq.py "${common[@]}" \
        --config.data.path=/root/data/nq_open --config.data.eval_limit=1000 \
        --config.sampling.eval_max_new_tokens=${NQ_EVAL:-128} --config.rl.advantage=$adv \
        --config.rl.prompts_per_step=32 --config.optim.micro_batches=4 --config.optim.learning_rate=3e-6 \
        --config.train.steps=${NQ_STEPS:-100} --config.train.checkpoint_every=25 ;;
    mbpp)
      bash benchmarks/learning_run.sh qwen_mbpp_$card --config=configs/mbpp.py "${common[@]}" \
        --config.data.path=/root/data/mbpp --config.data.eval_limit=500 \
        --config.sampling.eval_max_new_tokens=${CODE_EVAL:-768} \
        --config.rl.prompts_per_step=16 --config.optim.micro_batches=4 --config.optim.learning_rate=2e-6 \
        --config.train.steps=${MBPP_STEPS:-120} --config.train.checkpoint_every=20 ;;
    mbpp_g16|mbpp_g16_lr5e6)  # after qwen_mbpp_extracted (40 steps of 16 x 8, lr 2e-6) did not learn: 44-88% of
      # its groups of 8 (60% on average) had no reward spread (no gradient), so groups of 16 over 8 prompts (the same 128
      # rollouts per step), at its lr and at 2.5x it; then HumanEval greedy on both sides (HE_RUN=<run>)
      lr=2e-6; [[ $run == mbpp_g16_lr5e6 ]] && lr=5e-6
      bash benchmarks/learning_run.sh qwen_${run}_$card --config=configs/mbpp.py "${common[@]}" \
        --config.data.path=/root/data/mbpp --config.data.eval_limit=500 \
        --config.sampling.eval_max_new_tokens=${CODE_EVAL:-768} --config.rl.group_size=16 \
        --config.rl.prompts_per_step=8 --config.optim.micro_batches=4 --config.optim.learning_rate=$lr \
        --config.train.steps=${MBPP_STEPS:-60} --config.train.checkpoint_every=20 ;;
    humaneval)  # HE_WHICH="before after" (before needs no MBPP run: start it beside the training); each side
      # greedy (pass@1) and HE_SAMPLES samples at temperature 0.8 (pass@k; 0: greedy only), then the
      # comparisons. HE_RUN: the MBPP run folder whose weights are "after" (default qwen_mbpp)
      runs=${RUNS:-/root/runs}
      he_run=${HE_RUN:-qwen_mbpp}_$card
      mkdir -p $runs/$he_run/humaneval
      modes="greedy"; [[ ${HE_SAMPLES:-10} != 0 ]] && modes="greedy sampled"
      for which in ${HE_WHICH:-before after}; do
        ck=(--train_config=configs/mbpp.py)
        [[ $which == after ]] && ck=(--checkpoint=$runs/$he_run)
        for mode in $modes; do
          extra=(); suffix=""
          [[ $mode == sampled ]] && extra=(--num_samples=${HE_SAMPLES:-10} --temperature=0.8) && suffix=_k${HE_SAMPLES:-10}
          python3 scripts/evaluate.py --config=configs/humaneval.py --config.model.path=$M \
            --config.data.path=/root/data/humaneval --split=test "${ck[@]}" "${extra[@]}" --batch_size=256 \
            --config.sampling.eval_max_new_tokens=${CODE_EVAL:-768} \
            --exclude=benchmarks/results/mbpp_humaneval_near_duplicates.json \
            --out=$runs/$he_run/humaneval/$which$suffix 2>&1 | grep -v "^[IW][0-9]" | tail -8
        done
      done
      h=$runs/$he_run/humaneval
      for suffix in "" _k${HE_SAMPLES:-10}; do
        [[ -f $h/before$suffix/metrics.json && -f $h/after$suffix/metrics.json ]] || continue
        python3 scripts/compare.py $h/before$suffix $h/after$suffix --out=$h/compare$suffix 2>&1 | tail -12
      done
      [[ -n ${OUT:-} ]] && tar czf "$OUT/$he_run.tgz" -C "$runs" --exclude=checkpoints \
        --exclude=tensorboard $he_run ;;
    gsm8k_lr1e5)  # the gsm8k run at 3.3x its learning rate: at 3e-6 the training reward flattened at about
      # 0.36 from step 60 on (benchmarks/results/learning/qwen_gsm8k_h100/metrics.jsonl)
      bash benchmarks/learning_run.sh qwen_gsm8k_lr1e5_$card --config=configs/gsm8k.py "${common[@]}" \
        --config.data.path=/root/data/gsm8k --config.data.eval_limit=1319 \
        --config.sampling.max_new_tokens=512 --config.sampling.eval_max_new_tokens=${GSM8K_EVAL:-1024} \
        --config.rl.prompts_per_step=32 --config.optim.micro_batches=8 --config.optim.learning_rate=1e-5 \
        --config.train.steps=${GSM8K_STEPS:-120} --config.train.checkpoint_every=20 ;;
    smol_sst2)  # the demo's task and model at 4x the prompts per step and 2.5x the steps, all 174 held out
      bash benchmarks/learning_run.sh smol_sst2_$card --config=configs/quickstart.py "${common[@]/$M/$S}" \
        --config.data.path=/root/data/sst2 --config.data.eval_limit=174 \
        --config.rl.prompts_per_step=16 --config.optim.micro_batches=1 --config.optim.learning_rate=3e-5 \
        --config.train.steps=30 --config.train.checkpoint_every=10 ;;
    smol_nq)
      bash benchmarks/learning_run.sh smol_nq_$card --config=configs/nq.py "${common[@]/$M/$S}" \
        --config.model.dtype=float32 --config.data.path=/root/data/nq_open --config.data.eval_limit=1000 \
        --config.rl.prompts_per_step=32 --config.optim.micro_batches=1 --config.optim.learning_rate=2e-5 \
        --config.train.steps=60 --config.train.checkpoint_every=20 ;;
    ablations)  # 8 arms x 3 seeds on the demo's setting with two updates per batch (rl.mu=2: clips act)
      python3 benchmarks/ablations.py --runs ${RUNS:-/root/runs}/ablations --budget_s ${BUDGET:-540} \
        --parallel ${PARALLEL:-1} --min_start_s 30 --out ${OUT:-/root/runs}/ablations_$card.json \
        --archive ${OUT:-/root/runs}/ablation_runs_$card.tgz --base configs/quickstart.py \
        --base_flags --config.model.path=$S --config.data.path=/root/data/sst2 \
        --config.data.eval_limit=174 --config.train.export_hf=False --config.rl.mu=2 \
        --config.rl.prompts_per_step=8 --config.optim.micro_batches=1 --config.optim.learning_rate=3e-5 \
        2>&1 | grep -v "^[IW][0-9]" ;;
    *) echo "unknown run $run (gsm8k | gsm8k_lora | gsm8k_lr1e5 | sst2 | nq | nq_fixed | nq_lr3e6 | nq_drgrpo | mbpp | mbpp_g16 | mbpp_g16_lr5e6 | humaneval | smol_sst2 | smol_nq | ablations)"; exit 2 ;;
  esac
done
