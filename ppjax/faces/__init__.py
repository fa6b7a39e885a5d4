"""The faces task: hiding faces from a real, trained face detector (MTCNN) and checking the result
with an independent one (OpenCV's Haar cascade) on a face set built from photos that installed
packages ship."""
