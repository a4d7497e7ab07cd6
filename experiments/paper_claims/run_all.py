"""All four claims in one go (about 80 minutes on 2 CPU cores; reruns skip finished work).

    python experiments/paper_claims/run_all.py
"""

import time

import a_transfusion_vs_chameleon
import b_intra_image_attention
import c_linear_vs_unet
import d_noise_capping
from common import main


def claim():
    start = time.time()
    for module in (a_transfusion_vs_chameleon, b_intra_image_attention, c_linear_vs_unet, d_noise_capping):
        module.claim()
        print(f"[{(time.time() - start) / 60:.1f} min] {module.__name__} done", flush=True)


if __name__ == "__main__":
    main(claim)
