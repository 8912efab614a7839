#!/usr/bin/env bash
# Trains (or resumes) and ships the shapes and CIFAR-10 teachers into jkt_lab/teachers/, one after another.
# Resumable: each teacher checkpoints every epoch under $JKT_LAB_RUNS; rerun this script to go on.
# These exact commands are recorded in each teacher's card.
set -euo pipefail

JKT=${JKT:-jkt-lab}
# the embedded shapes dataset: the teacher of `jkt-lab demo` (about 75 CPU-seconds on one core)
$JKT train-teacher --device cpu --no-progress --dataset shapes --n-train 5000 --teacher tiny \
    --teacher-width 16 --teacher-epochs 30 --ship shapes
common=(--device cpu --no-progress --dataset cifar10 --teacher vgg9 --teacher-epochs 30)
# all ten classes: distillation and robustness experiments
$JKT train-teacher "${common[@]}" --teacher-width 32 --ship cifar10
# trained with Gaussian input noise (sigma 0.1): the robust teacher of the robustness experiment
$JKT train-teacher "${common[@]}" --teacher-width 32 --teacher-train-sigma 0.1 --ship cifar10-noise
# classes 0-4 only: the source task of the transfer experiment
$JKT train-teacher "${common[@]}" --teacher-width 24 --teacher-classes 0,1,2,3,4 --ship cifar10-source
