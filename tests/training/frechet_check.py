"""The Frechet distance of two feature files computed directly with numpy and scipy, the way
pytorch-fid's calculate_frechet_distance does: scipy.linalg.sqrtm of the covariance product.
Usage: frechet_check.py A.txt B.txt (rows = samples, whitespace-separated); prints one number."""
import sys

import numpy as np
import scipy.linalg

a = np.loadtxt(sys.argv[1], dtype=np.float64, ndmin=2)
b = np.loadtxt(sys.argv[2], dtype=np.float64, ndmin=2)
mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
covmean = scipy.linalg.sqrtm(s1.dot(s2))
if np.iscomplexobj(covmean):
    covmean = covmean.real
diff = mu1 - mu2
print(repr(float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))))
