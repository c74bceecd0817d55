#!/usr/bin/env bash
# Continued pretraining launcher: edit the variables, then `bash run_pt.sh [more flags]`.
# Extra flags are passed to pretrain.py and override the ones below. Set DEEPSPEED_CONFIG="" to train
# without DeepSpeed (e.g. on CPU). On several nodes run it on each with its NODE_RANK.
set -euo pipefail

MODEL_DIR=${MODEL_DIR:-.cache/smollm2}            # base model folder (or hub id)
TOKENIZER_DIR=${TOKENIZER_DIR:-$MODEL_DIR}        # tokenizer (an extended one when the vocabulary grew)
DATA_DIR=${DATA_DIR:-data}                        # .txt/.jsonl/.json/.csv/.parquet files, read recursively
DATA_CACHE=${DATA_CACHE:-.cache/prepared}         # tokenized, packed data (reused while inputs are unchanged)
OUTPUT_DIR=${OUTPUT_DIR:-outputs/pt}
DEEPSPEED_CONFIG=${DEEPSPEED_CONFIG-ds_configs/zero2_no_offload.json}
GPUS_PER_NODE=${GPUS_PER_NODE:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
SEED=${SEED:-42}                                   # fixed: a rerun is the same run

deepspeed_flag=()
[ -n "$DEEPSPEED_CONFIG" ] && deepspeed_flag=(--deepspeed "$DEEPSPEED_CONFIG")

torchrun \
    --nnodes "$NNODES" \
    --nproc_per_node "$GPUS_PER_NODE" \
    --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" \
    --master_port "$MASTER_PORT" \
    pretrain.py \
    "${deepspeed_flag[@]}" \
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
