#!/bin/bash
# Runs the GPU benchmarks of bench/README.md on a lent GPU machine (no ESPnet there):
# installs the carried wheels (.whl, see bench/README.md), then each named task with
# its own time limit, logs and outputs under /tmp/res, packed into $OUT/results.tgz.
#
#   bash bench/device_run.sh checks stock_bf16 replay long deploy
#
# tasks: probe checks profile profile_eval replay replay_bf16 stock_bf16 stock_fp32 long
#        infer fixed deploy kernels stock_kernels stock_graphs bounds bounds_expandable
#        bounds_infer graph_memory memory_trace memory_trace_iml chunk chunk_ab
#        chunk_probe chunk_profile compile_ahead cold_ahead rounds librispeech
#        librispeech_variants profile_librispeech profile_ops_librispeech
#        profile_short_librispeech softmax_checks aishell_round input_kernels
#        librispeech_input input_tune input_aishell aishell_iml aishell_memory
#        checks_shared profile_ops_now librispeech_profile librispeech_ab
#        checks_librispeech compiled_infer compiled_infer_librispeech compiled_ab align_ab
#        checks_compiled graphs_probe compiled_graphs_ab
#        compiled_host_probe compiled_varied compiled_round2
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
RES=/tmp/res
mkdir -p $RES
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $RES/device.txt
python3 -c "import torch; print('torch', torch.__version__)" | tee -a $RES/device.txt

task() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date +%T))"
    timeout "$limit" "$@" > $RES/$name.log 2>&1
    echo "=== $name rc=$? ($(date +%T))"
    tar czf $OUT/results.tgz -C $RES . 2>/dev/null  # what is done so far comes back
    grep -v '^\[' $RES/$name.log | grep -E '^\||"output_max|error|Error|OOM|rc=' | tail -40
}

stock_bf16_task() {  # name, seconds, models...: stock asr_train in bf16, logs kept
    local name=$1 limit=$2
    shift 2
    task $name $limit python3 bench/stock_train.py --out /tmp/$name --precision bf16 \
        --models "$@"
    mkdir -p $RES/$name && cp /tmp/$name/stock_train.* $RES/$name/ 2>/dev/null
    for d in /tmp/$name/*_bf16; do grep -v "^ " $d/train.log | tail -60 \
        > $RES/$name/$(basename $d).log; cp $d/memory.json \
        $RES/$name/$(basename $d).memory.json 2>/dev/null; done
}

stock_bf16_librispeech() {  # name, seconds, models...: asr_train, LibriSpeech configs
    local name=$1 limit=$2
    shift 2
    task $name $limit python3 bench/stock_train.py --out /tmp/$name --recipe librispeech \
        --utterances 8000 --pool 1500 --precision bf16 --models "$@"
    mkdir -p $RES/$name && cp /tmp/$name/stock_train.* $RES/$name/
    for d in /tmp/$name/*_bf16; do grep -v "^ " $d/train.log | tail -80 \
        > $RES/$name/$(basename $d).log; grep -c "CUDA graph" $d/train.log \
        > $RES/$name/$(basename $d).captures; done
    tar czf $OUT/results.tgz -C $RES .
}

for t in "$@"; do
    case $t in
    probe)  # capture mode for the tasks after it: the first that captures the encoder
        task probe 300 python3 bench/graph_probe.py
        cat $RES/probe.log | cut -c1-1200
        mode=$(grep -E '^encoder_graphs_[a-z_]+: PASS' $RES/probe.log | head -1 \
            | sed -E 's/^encoder_graphs_([a-z_]+): PASS.*/\1/')
        if [ -n "$mode" ]; then export IMLSPIKE_CAPTURE_MODE=$mode
        else export IMLSPIKE_CUDA_GRAPHS=0; fi
        echo "capture mode: ${mode:-none, CUDA graphs off}" | tee -a $RES/device.txt ;;
    checks) task checks 300 python3 bench/fast_checks.py --out $RES/checks ;;
    softmax_checks)  # the attention kernels alone (forward and backward) vs PyTorch's ops
        task softmax_checks 200 python3 bench/fast_checks.py --out $RES/softmax_checks \
            --parts softmax ;;
    input_kernels)  # the first convolution's kernels: checks, then the layer alone
        task input_checks 300 python3 bench/fast_checks.py --out $RES/input_checks \
            --parts input input_kernels softmax
        task input_probe_librispeech 200 python3 bench/input_layer_probe.py --size librispeech \
            --batch 64 --frames 1536 --profile --out $RES/input_probe_librispeech
        task input_probe_aishell 200 python3 bench/input_layer_probe.py --size aishell \
            --batch 32 --frames 1600 --out $RES/input_probe_aishell ;;
    input_aishell)  # the input layer and the encoder step at AISHELL's size, with and
        # without the first convolution's kernels (GPU kernels of each)
        task input_probe_aishell 200 python3 bench/input_layer_probe.py --size aishell \
            --batch 32 --frames 1600 --profile --out $RES/input_probe_aishell
        task profile_aishell 200 python3 bench/profile_step.py --out $RES/profile_aishell \
            --top 40 --models transformer iml_imls_t6 iml_imls_t6@noinputkernels \
            no_encoder_blocks
        grep -E "^##" $RES/profile_aishell.log ;;
    input_tune)  # the first convolution's kernels per block configuration, vs PyTorch
        task input_tune 200 python3 bench/input_kernel_tune.py --out $RES/input_tune ;;
    librispeech_input)  # asr_train, LibriSpeech: the default beside it without them
        stock_bf16_librispeech librispeech_input 590 transformer iml_imls_t6 \
            iml_imls_t6@noinputkernels no_encoder_blocks ;;
    aishell_iml)  # the IML default alone through asr_train, AISHELL (its peak memory)
        stock_bf16_task aishell_iml 200 iml_imls_t6 ;;
    aishell_memory)  # asr_train, AISHELL: peak memory of the default beside a static
        # tensor pair per bucket and beside the input layer's PyTorch operations
        stock_bf16_task aishell_memory 560 transformer iml_imls_t6 iml_imls_t6@nosharedstatic \
            iml_imls_t6@noinputkernels ;;
    checks_shared)  # the graphs' bit-for-bit checks (static tensors shared: the default)
        task checks_shared 300 python3 bench/fast_checks.py --parts graphs \
            --out $RES/checks_shared ;;
    input_checks)  # the chunked input layer (and its kernels) against ESPnet's module
        task input_checks 300 python3 bench/fast_checks.py --out $RES/input_checks \
            --parts input input_kernels ;;
    aishell_pair)  # asr_train, AISHELL: the Transformer and the default, time and memory
        stock_bf16_task aishell_pair 300 transformer iml_imls_t6 ;;
    aishell_round)  # one asr_train round: Transformer, default, floor, multi-step
        stock_bf16_task aishell_round 420 transformer iml_imls_t6 no_encoder_blocks \
            iml_multistep_t6:100 ;;
    compile_ahead)  # a first run's kernel compilation, serial vs ahead, each cache empty
        task compile_ahead 300 python3 bench/compile_ahead_probe.py --out $RES/compile_ahead ;;
    rounds)  # the default beside the Transformer and the floor, three rounds in turn
        task rounds 580 python3 bench/stock_train.py --out /tmp/rounds --precision bf16 \
            --rounds 3 --models transformer iml_imls_t6 no_encoder_blocks
        mkdir -p $RES/rounds && cp /tmp/rounds/stock_train.* $RES/rounds/
        tail -8 $RES/rounds/stock_train.md ;;
    profile_librispeech)  # the encoder step at the LibriSpeech size, 64 x 1536 frames
        task profile_librispeech 300 python3 bench/profile_step.py --out $RES/profile_librispeech \
            --size librispeech --batch 64 --frames 1536 --top 40 --models transformer \
            iml_imls_t6 iml_imls_t6@noinputkernels iml_imls_t6@nochunk iml_imls_t6@nographs \
            no_encoder_blocks
        grep -E "^##|^\{" $RES/profile_librispeech.log ;;
    profile_ops_librispeech)  # which operators launch the IML step's kernels (no graphs)
        task profile_ops_librispeech 300 python3 bench/profile_step.py --by-op \
            --out $RES/profile_ops_librispeech --size librispeech --batch 64 --frames 1536 \
            --top 60 --models transformer iml_imls_t6@nographs
        grep -E "^##|^\{" $RES/profile_ops_librispeech.log ;;
    profile_ops_now)  # which operators launch the IML step's kernels now (no graphs),
        # at LibriSpeech's long and short numel batches
        task profile_ops_long 300 python3 bench/profile_step.py --by-op \
            --out $RES/profile_ops_long --size librispeech --batch 64 --frames 1536 \
            --top 50 --models transformer iml_imls_t6 iml_imls_t6@nographs
        grep -E "^##|^\{" $RES/profile_ops_long.log
        task profile_ops_short 300 python3 bench/profile_step.py --by-op \
            --out $RES/profile_ops_short --size librispeech --batch 256 --frames 384 \
            --top 50 --models transformer iml_imls_t6 iml_imls_t6@nographs
        grep -E "^##|^\{" $RES/profile_ops_short.log ;;
    profile_short_librispeech)  # the encoder step on a numel batch of short utterances
        task profile_short_librispeech 200 python3 bench/profile_step.py \
            --out $RES/profile_short_librispeech --size librispeech --batch 256 --frames 384 \
            --top 30 --models transformer iml_imls_t6 iml_imls_t6@nochunk
        grep -E "^##" $RES/profile_short_librispeech.log ;;
    librispeech_variants)  # the same asr_train runs: the Transformer, IML without chunks
        stock_bf16_librispeech librispeech_variants 560 transformer iml_imls_t6@nochunk ;;
    librispeech_last)  # asr_train, LibriSpeech: the default (last map kept) beside
        # recomputing it, and the Transformer
        stock_bf16_librispeech librispeech_last 560 transformer iml_imls_t6 \
            iml_imls_t6@recomputelast ;;
    librispeech_profile)  # asr_train, LibriSpeech, the Transformer and the default, each
        # with steps 181-185 under the profiler (bench/step_profile.py; the last 100 clean)
        task librispeech_profile 580 python3 bench/stock_train.py --out /tmp/lprof \
            --recipe librispeech --utterances 8000 --pool 1500 --precision bf16 \
            --step-profile 180:5 --models transformer iml_imls_t6
        mkdir -p $RES/librispeech_profile && cp /tmp/lprof/stock_train.* $RES/librispeech_profile/
        for d in /tmp/lprof/*_bf16; do n=$(basename $d); grep -v "^ " $d/train.log | tail -80 \
            > $RES/librispeech_profile/$n.log; cp $d/step_profile.json \
            $RES/librispeech_profile/$n.step_profile.json; cp $d/step_profile.trace.json.gz \
            $OUT/$n.trace.json.gz; done
        tar czf $OUT/results.tgz -C $RES . ;;
    compiled_infer)  # target 3: torch.compile in inference, the input layer as one
        # operator (default) beside ESPnet's module traced by the compiler (@nochunk)
        task compiled_infer 360 python3 bench/inference_speed.py --out $RES/compiled_infer \
            --models transformer no_encoder_blocks iml_imls_t6 \
            --compile transformer no_encoder_blocks iml_imls_t6@nochunk iml_imls_t6
        task profile_compiled 220 python3 bench/profile_step.py --out $RES/profile_compiled \
            --eval --compile --frames 1200 --top 30 --models transformer iml_imls_t6@nochunk \
            iml_imls_t6
        grep -h "^##" $RES/profile_compiled/*.txt ;;
    compiled_infer_librispeech)  # the same at LibriSpeech's size (conv2d6, 18 x 512)
        task compiled_infer_librispeech 360 python3 bench/inference_speed.py \
            --out $RES/compiled_infer_librispeech --size librispeech --batch 64 \
            --frames 1536 --models transformer iml_imls_t6 \
            --compile transformer iml_imls_t6@nochunk iml_imls_t6 ;;
    compiled_ab)  # compiled inference, each IML variant beside the Transformer in its own
        # process (timed in turn), at AISHELL's and LibriSpeech's sizes, and the GPU kernels
        for variant in iml_imls_t6@nochunk iml_imls_t6; do
            task compiled_ab_$variant 200 python3 bench/compiled_inference_ab.py \
                --out $RES/compiled_ab_$variant transformer $variant
            task compiled_ab_librispeech_$variant 250 python3 bench/compiled_inference_ab.py \
                --out $RES/compiled_ab_librispeech_$variant --size librispeech --batch 64 \
                --frames 1536 transformer $variant
        done
        task profile_compiled_librispeech 300 python3 bench/profile_step.py \
            --out $RES/profile_compiled_librispeech --eval --compile --size librispeech \
            --batch 64 --frames 1536 --top 30 --models iml_imls_t6@nochunk iml_imls_t6
        grep -h "^##" $RES/profile_compiled_librispeech/*.txt ;;
    graphs_probe)  # what the compiler's CUDA graphs (mode="reduce-overhead") would give:
        # the spiking encoder with them beside the default Transformer, then both with them
        task probe_iml_graphs 200 python3 bench/compiled_inference_ab.py \
            --out $RES/probe_iml_graphs transformer iml_imls_t6 --reduce-overhead iml_imls_t6
        task probe_both_graphs 200 python3 bench/compiled_inference_ab.py \
            --out $RES/probe_both_graphs transformer iml_imls_t6 \
            --reduce-overhead transformer iml_imls_t6 ;;
    compiled_graphs_ab)  # compiled inference with the blocks as the operator replaying
        # compiled CUDA graphs (the default) and traced (@nocompiledgraphs), each variant
        # beside the Transformer in its own process, both sizes; then the GPU check
        for variant in iml_imls_t6 iml_imls_t6@nocompiledgraphs; do
            task cgraphs_ab_$variant 200 python3 bench/compiled_inference_ab.py \
                --out $RES/cgraphs_ab_$variant transformer $variant
        done
        for variant in iml_imls_t6 iml_imls_t6@nocompiledgraphs; do
            task cgraphs_ab_librispeech_$variant 250 python3 bench/compiled_inference_ab.py \
                --out $RES/cgraphs_ab_librispeech_$variant --size librispeech --batch 64 \
                --frames 1536 transformer $variant
        done
        task checks_compiled_blocks 300 python3 bench/fast_checks.py --parts compiled_blocks \
            --out $RES/checks_compiled_blocks ;;
    compiled_varied)  # compiled inference over 30 batches of new lengths, twice (the
        # first pass pays compilations and captures); one model per process
        for model in transformer iml_imls_t6 iml_imls_t6@nocompiledgraphs; do
            task compiled_varied_$model 200 python3 bench/compiled_varied_lengths.py \
                --out $RES/compiled_varied_$model $model
        done ;;
    compiled_round2)  # after the host-time cuts: new lengths (Transformer, operator) and
        # fixed shapes (operator, traced blocks), each beside the Transformer
        for model in transformer iml_imls_t6; do
            task compiled_varied_$model 200 python3 bench/compiled_varied_lengths.py \
                --out $RES/compiled_varied_$model $model
        done
        for variant in iml_imls_t6 iml_imls_t6@nocompiledgraphs; do
            task cgraphs_ab_$variant 150 python3 bench/compiled_inference_ab.py \
                --out $RES/cgraphs_ab_$variant transformer $variant
        done ;;
    compiled_host_probe)  # where a compiled call's host time goes (the operator on)
        task compiled_host_probe 300 env PYTHONPATH=/tmp/site:. python3 \
            bench/compiled_host_probe.py ;;
    checks_compiled)  # the compiled input-layer operator vs the eager chunked layer
        task checks_compiled 200 python3 bench/fast_checks.py --parts compiled_input \
            --out $RES/checks_compiled ;;
    checks_librispeech)  # graphs vs eager and the chunked input layer vs ESPnet's module,
        # at LibriSpeech's size (conv2d6, 18 x 512: its buckets and chunks)
        task checks_librispeech 200 python3 bench/fast_checks.py --size librispeech \
            --out $RES/checks_librispeech --parts graphs input ;;
    align_ab)  # the eager blocks (no graphs; the baselines always) at an unaligned length
        # of LibriSpeech's conv2d6 (1530 frames: 254), this tree and each of bench/_ab/
        for round in 1 2; do
            for tree in . bench/_ab/*/; do rev=$(basename $tree); [ $tree = . ] && rev=new
                task align_ab_${rev}_$round 200 python3 $tree/bench/profile_step.py \
                    --out $RES/align_ab/${rev}_$round --size librispeech --batch 16 \
                    --frames 1530 --top 15 --models iml_imls_t6@nographs iml_multistep_t6 \
                    spike_driven_transformer_t6
            done
        done
        grep -H "^##" $RES/align_ab/*/*.txt ;;
    librispeech_ab)  # asr_train, LibriSpeech: the Transformer and the default of this
        # tree, then the default of each tree under bench/_ab/ (earlier commits extracted
        # there with git archive before the call, ignored by git: carry it with .whl; the
        # device's copy of .git lacks the session's commits)
        lib_args="--recipe librispeech --utterances 8000 --pool 1500 --precision bf16"
        task ab_new 300 python3 bench/stock_train.py --out /tmp/ab_new $lib_args \
            --models transformer iml_imls_t6
        for tree in bench/_ab/*/; do rev=$(basename $tree)
            task ab_$rev 200 python3 $tree/bench/stock_train.py --out /tmp/ab_$rev \
                $lib_args --models iml_imls_t6
        done
        for d in /tmp/ab_*; do mkdir -p $RES/librispeech_ab/$(basename $d)
            cp $d/stock_train.* $RES/librispeech_ab/$(basename $d)/
            for r in $d/*_bf16; do grep -v "^ " $r/train.log | tail -60 \
                > $RES/librispeech_ab/$(basename $d)/$(basename $r).log; done; done
        tar czf $OUT/results.tgz -C $RES .
        grep -h "^| [it]" $RES/librispeech_ab/*/stock_train.md ;;
    librispeech)  # the LibriSpeech configs (18 x 512, numel batches of 1000 s of audio)
        stock_bf16_librispeech librispeech 580 transformer iml_imls_t6 no_encoder_blocks ;;
    cold_ahead)  # through asr_train, each run a first run (its own empty Triton cache)
        task cold_ahead 480 python3 bench/stock_train.py --out /tmp/cold --precision bf16 \
            --cold --models transformer iml_imls_t6 iml_imls_t6@noahead iml_imls_t6:300 \
            iml_imls_t6@noahead:300
        mkdir -p $RES/cold_ahead && cp /tmp/cold/stock_train.* $RES/cold_ahead/
        for d in /tmp/cold/*_bf16; do grep -v "^ " $d/train.log | tail -60 \
            > $RES/cold_ahead/$(basename $d).log; done ;;
    replay) task replay 300 python3 bench/replay_shapes.py --out $RES/replay ;;
    replay_bf16)  # graph captures and the graph pool logged
        task replay_bf16 200 python3 bench/replay_shapes.py --out $RES/replay_bf16 \
            --precision bfloat16 --models transformer iml_imls_t6@nographs iml_imls_t6
        grep -E "captured" $RES/replay_bf16.log | tail -40 ;;
    profile_eval) task profile_eval 150 python3 bench/profile_step.py --out $RES/profile \
            --eval --frames 1200 --top 30 --models transformer iml_imls_t6
        cat $RES/profile/profile_eval_bfloat16.txt ;;
    stock_bf16) stock_bf16_task stock_bf16 420 transformer iml_imls_t6 iml_imls_t6@ref \
        iml_multistep_t6:100 no_encoder_blocks ;;
    stock_kernels)  # the default (Triton kernels) beside the same path without them
        stock_bf16_task stock_kernels 330 transformer iml_imls_t6 iml_imls_t6@notriton \
            iml_imls_t6@nographs iml_multistep_t6:100 no_encoder_blocks ;;
    stock_graphs)  # the default beside the Transformer and the eager fused path
        stock_bf16_task stock_graphs 240 transformer iml_imls_t6 iml_imls_t6@nographs
        grep -h "captured\|CUDA graph" /tmp/stock_graphs/iml_imls_t6_bf16/train.log \
            | cut -c1-200 > $RES/stock_graphs/captures.log ;;
    stock_fp32) task stock_fp32 170 python3 bench/stock_train.py --out /tmp/st32 \
        --precision fp32 --models transformer iml_imls_t6 no_encoder_blocks
        mkdir -p $RES/stock_fp32 && cp /tmp/st32/stock_train.* $RES/stock_fp32/ 2>/dev/null ;;
    profile) task profile_bf16 150 python3 bench/profile_step.py --out $RES/profile
        grep -h "^##" $RES/profile/*.txt ;;
    profile_fp32) task profile_fp32 150 python3 bench/profile_step.py --out $RES/profile \
            --dtype float32
        grep -h "^##" $RES/profile/*.txt ;;
    memory)  # peak memory of the fused modules without CUDA graphs, beside the default
        task memory_stock 240 python3 bench/stock_train.py --out /tmp/stm --precision bf16 \
            --models transformer iml_imls_t6@nographs iml_imls_t6
        mkdir -p $RES/memory && cp /tmp/stm/stock_train.* $RES/memory/ 2>/dev/null
        task memory_long 150 python3 bench/long_utterances.py --out $RES/memory \
            --lengths 1000 2000 4000 8000 --models transformer iml_imls_t6@nographs \
            iml_imls_linear_t6@nographs iml_imls_t6 ;;
    long) task long 150 python3 bench/long_utterances.py --out $RES/long ;;
    infer) task infer 240 python3 bench/inference_speed.py --out $RES/infer \
        --compile transformer iml_imls_t6 ;;
    fixed) task fixed 120 python3 bench/train_speed.py --out $RES/fixed \
        --models transformer iml_imls_t6@ref iml_imls_t6 iml_multistep_t6 ;;
    kernels)  # the Triton kernels of IMLS firing against the same path without them
        task kernels_profile 150 python3 bench/profile_step.py --out $RES/kernels --top 30 \
            --models transformer iml_imls_t6@notriton iml_imls_t6
        grep -h "^##" $RES/kernels/*.txt
        task kernels_infer 150 python3 bench/inference_speed.py --out $RES/kernels \
            --models transformer iml_imls_t6@notriton iml_imls_t6
        task kernels_fixed 150 python3 bench/train_speed.py --out $RES/kernels \
            --models transformer iml_imls_t6@notriton iml_imls_t6 ;;
    infer_fixed)  # inference with compilation, and the fixed-shape step with multi-step T=6
        task infer_fixed_infer 150 python3 bench/inference_speed.py --out $RES/infer_fixed \
            --models transformer iml_imls_t6 --compile transformer iml_imls_t6
        task infer_fixed_fixed 120 python3 bench/train_speed.py --out $RES/infer_fixed \
            --models transformer iml_imls_t6 iml_multistep_t6 ;;
    bounds)  # the final code beside everything bounding it, in one asr_train run; Triton's
        # disk cache emptied first (cold one-time cost), the default again with it filled
        rm -rf ~/.triton/cache
        stock_bf16_task bounds_stock 520 transformer iml_imls_t6 iml_imls_t6:300 \
            iml_imls_t6@nochunk iml_imls_t6@nographs no_encoder_blocks iml_multistep_t6:100
        find ~/.triton/cache -name "*.cubin" | sed 's|.*/||' | sort | uniq -c \
            > $RES/bounds_stock/triton_cubins.txt; cat $RES/bounds_stock/triton_cubins.txt ;;
    bounds_expandable)  # the same with the allocator's expandable segments (less slack)
        ( export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
          stock_bf16_task bounds_expandable 360 transformer iml_imls_t6 no_encoder_blocks \
              iml_multistep_t6:100 ) ;;
    bounds_infer)  # inference beside its floor (input layer + final LayerNorm), both ways
        task bounds_infer 300 python3 bench/inference_speed.py --out $RES/bounds_infer \
            --models transformer no_encoder_blocks iml_imls_t6 \
            --compile transformer no_encoder_blocks iml_imls_t6
        task profile_compiled 200 python3 bench/profile_step.py --out $RES/profile --eval \
            --compile --frames 1200 --top 30 --models transformer no_encoder_blocks iml_imls_t6
        grep -h "^##" $RES/profile/*.txt ;;
    memory_trace|memory_trace_iml|memory_trace_input)  # where the reserved memory is when
        # it peaks (allocator history; slow); memory_trace_iml: the IML default only;
        # memory_trace_input: the default beside the input layer's PyTorch operations
        models="iml_imls_t6 no_encoder_blocks transformer"
        [ $t = memory_trace_iml ] && models=iml_imls_t6
        [ $t = memory_trace_input ] && models="iml_imls_t6 iml_imls_t6@noinputkernels"
        ( export IMLSPIKE_MEMORY_TRACE=1
          stock_bf16_task memory_trace 420 $models )
        for d in /tmp/memory_trace/*_bf16; do cp $d/memory.trace.json \
            $RES/memory_trace/$(basename $d).trace.json; done
        python3 -c "import json,glob
for f in sorted(glob.glob('$RES/memory_trace/*.trace.json')):
    d = json.load(open(f)); print(f.split('/')[-1], round(d['peak_reserved_gib'], 2),
        d['complete'], {k: round(v, 2) for k, v in d['reserved_by_place_gib'].items()},
        {k: round(v, 2) for k, v in d['allocated_by_place_gib'].items()})" ;;
    chunk)  # the chunked input layer (fast/subsampling.py) beside ESPnet's module, asr_train
        stock_bf16_task chunk_stock 480 transformer iml_imls_t6 iml_imls_t6@nochunk \
            iml_imls_t6@nographs no_encoder_blocks iml_multistep_t6:100 ;;
    chunk_ab)  # the default and @nochunk alternating, twice (steady-state time is noisy)
        stock_bf16_task chunk_ab 400 iml_imls_t6@nochunk iml_imls_t6 iml_imls_t6@nochunk:300 \
            iml_imls_t6:300 ;;
    chunk_probe)  # the chunked input layer alone vs ESPnet's module (shapes, time, memory)
        task input_probe 200 python3 bench/input_layer_probe.py --out $RES/input_probe ;;
    chunk_profile)  # GPU kernels of an encoder training step with and without it
        task chunk_profile 200 python3 bench/profile_step.py --out $RES/chunk_profile \
            --top 30 --models transformer iml_imls_t6@nochunk iml_imls_t6
        grep -h "^##" $RES/chunk_profile/*.txt ;;
    graph_memory) task graph_memory 150 python3 bench/graph_memory.py --out $RES/graph_memory ;;
    deploy)
        task deploy_spike_train 120 python3 bench/deploy_divergence.py --device cuda \
            --blocks 6 --size 256 --timesteps 6
        task deploy_multi_level 120 python3 bench/deploy_divergence.py --device cuda \
            --blocks 6 --size 256 --timesteps 6 --execution multi_level
        grep -v '^\[' $RES/deploy_spike_train.log | tail -20 ;;
    esac
done
tar czf $OUT/results.tgz -C $RES .
ls -la $OUT
