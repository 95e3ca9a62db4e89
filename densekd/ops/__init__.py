"""Kernels the methods use but that are not methods (the layout: README, "Development").

A method file imports them and reads against its paper; each kernel is tested on its own (tests/test_ops.py).
"""
from .attention import (ATTENTION_BLOCK_ELEMENTS, ATTENTION_BLOCK_ELEMENTS_ACCELERATOR, ATTENTION_MIN_ROWS,
                        BlockedAttention, ProjectedAttention, block_rows, blocked_attention, cross_attention,
                        projected_attention)
from .channel_kl import ChannelKL, channel_kl
from .grad import flush_subnormal_grad, reverse_grad, zero_subnormals
from .linear import affine, pointwise
from .pearson import StandardisedMSE, standardised_mse
from .relation import (RELATION_BLOCK_ELEMENTS, RELATION_BLOCK_ELEMENTS_ACCELERATOR, RelationKL, relation_block_rows,
                       relation_kl)
from .squared_error import SquaredErrorSums, at_least_fp32, squared_error_sums
from .wavelet import min_side_for, need_ptwt, wavelet_decompose, wavelet_reconstruct

__all__ = ["ATTENTION_BLOCK_ELEMENTS", "ATTENTION_BLOCK_ELEMENTS_ACCELERATOR", "ATTENTION_MIN_ROWS",
           "BlockedAttention", "ChannelKL", "ProjectedAttention", "RELATION_BLOCK_ELEMENTS",
           "RELATION_BLOCK_ELEMENTS_ACCELERATOR", "RelationKL", "SquaredErrorSums", "StandardisedMSE", "affine",
           "at_least_fp32", "block_rows", "blocked_attention", "channel_kl", "cross_attention",
           "flush_subnormal_grad", "min_side_for", "need_ptwt", "pointwise", "projected_attention",
           "relation_block_rows", "relation_kl", "reverse_grad", "squared_error_sums", "standardised_mse",
           "wavelet_decompose", "wavelet_reconstruct", "zero_subnormals"]
