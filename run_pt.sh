#!/usr/bin/env bash
# Continued pretraining launcher: edit the variables, then `bash run_pt.sh [more flags]`.
# Extra flags are passed to pretrain.py and override the ones below (`bash run_pt.sh --dry_run` prints the
# plan and exits). Set DEEPSPEED_CONFIG="" to train without DeepSpeed (plain DDP; on CPU too).
# One node: set GPUS_PER_NODE. Several nodes: run it on each with the same MASTER_ADDR (the first node) and
# NNODES, and NODE_RANK 0..NNODES-1; or set RDZV_ID (any job id) to let torchrun's rendezvous number the
# nodes (what examples/slurm/pretrain.sbatch does). A run started again resumes from its last checkpoint.
set -euo pipefail

MODEL_DIR=${MODEL_DIR:-.cache/smollm2}            # base model folder (or hub id)
TOKENIZER_DIR=${TOKENIZER_DIR:-$MODEL_DIR}        # tokenizer (an extended one when the vocabulary grew)
DATA_DIR=${DATA_DIR:-data}                        # .txt/.jsonl/.json/.csv/.parquet files, read recursively
DATA_CACHE=${DATA_CACHE:-.cache/prepared}         # tokenized, packed data (reused while inputs are unchanged)
OUTPUT_DIR=${OUTPUT_DIR:-outputs/pt}              # checkpoints and the final adapter or model
DEEPSPEED_CONFIG=${DEEPSPEED_CONFIG-ds_configs/zero2_no_offload.json}   # "" for DDP; zero3_* shards weights
GPUS_PER_NODE=${GPUS_PER_NODE:-1}                 # processes per node (one per GPU)
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}                         # this node's number, 0 on the first (ignored with RDZV_ID)
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}             # the first node's address, reachable from every node
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-}                              # set: torchrun rendezvous (c10d) at MASTER_ADDR:MASTER_PORT
PRECISION=${PRECISION-}                           # --bf16 (A100/H100), --fp16 (older GPUs), "" fp32 (CPU)
SEED=${SEED:-42}                                   # fixed: a rerun is the same run

deepspeed_flag=()
[ -n "$DEEPSPEED_CONFIG" ] && deepspeed_flag=(--deepspeed "$DEEPSPEED_CONFIG")
precision_flag=()
[ -n "$PRECISION" ] && precision_flag=("$PRECISION")

if [ -n "$RDZV_ID" ]; then
    nodes=(--rdzv_id "$RDZV_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT")
else
    nodes=(--node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
fi

torchrun \
    --nnodes "$NNODES" \
    --nproc_per_node "$GPUS_PER_NODE" \
    "${nodes[@]}" \
    pretrain.py \
    "${deepspeed_flag[@]}" \
    "${precision_flag[@]}" \
    --model_name_or_path "$MODEL_DIR" \
    --tokenizer_name_or_path "$TOKENIZER_DIR" \
    --dataset_dir "$DATA_DIR" \
    --data_cache_dir "$DATA_CACHE" \
    --validation_split_percentage 0.1 \
    --per_device_train_batch_size 1 \
    --per_device_eval_batch_size 1 \
    --gradient_accumulation_steps 8 \
    --do_train \
    --do_eval \
    --seed "$SEED" \
    --num_train_epochs 1 \
    --lr_scheduler_type cosine \
    --learning_rate 2e-4 \
    --warmup_steps 0.05 \
    --weight_decay 0.01 \
    --logging_strategy steps \
    --logging_steps 10 \
    --logging_first_step True \
    --eval_strategy steps \
    --eval_steps 200 \
    --save_strategy steps \
    --save_steps 200 \
    --save_total_limit 3 \
    --preprocessing_num_workers 8 \
    --block_size 512 \
    --output_dir "$OUTPUT_DIR" \
    --ddp_timeout 30000 \
    --lora_rank 8 \
    --lora_alpha 32 \
    --lora_dropout 0.05 \
    --trainable q_proj,v_proj,k_proj,o_proj,gate_proj,down_proj,up_proj \
    --modules_to_save embed_tokens,lm_head \
    --gradient_checkpointing \
    --ddp_find_unused_parameters False \
    "$@"
