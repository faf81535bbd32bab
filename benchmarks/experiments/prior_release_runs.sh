# Runs behind the "release the self prior around corrected strokes" row of docs/training.md.
# Apply benchmarks/experiments/prior_release.patch first; run once with CNNSEG_EXP_RADIUS=0,0,0
# (baseline) and once with CNNSEG_EXP_RADIUS=1,4,4. /tmp/exp/mni_thick*.nrrd = every 5th MNI slice
# (5 mm), /tmp/exp/phantom_*.nrrd = make_phantom() written with core.io.write_volume.
cd "$(dirname "$0")/../.."
D=../shared/data/itk_kmeans_t1; M=../shared/data/mni_icbm152_2009a; B=".venv/bin/python benchmarks/bench_scribbles.py --no-rf --steps-per-round 45"
for seed in 0 1; do
$B --seed $seed --image $D/KmeansTest_T1UCharRaw.nii.gz --labels $D/brain_mask.nii.gz
$B --seed $seed --image $M/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz --labels $M/labels_gm1_wm2.nii.gz
$B --seed $seed --image /tmp/exp/mni_thick.nrrd --labels /tmp/exp/mni_thick_lab.nrrd
$B --seed $seed --image /tmp/exp/phantom_img.nrrd --labels /tmp/exp/phantom_lab.nrrd --model phantom-unet --no-scratch
done
