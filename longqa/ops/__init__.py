"""Pure math and Triton kernels. Nothing in this package imports transformers."""
