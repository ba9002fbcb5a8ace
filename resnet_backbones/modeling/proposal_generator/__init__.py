"""Proposal generators: the RPN and its head."""

from .rpn import PROPOSAL_GENERATOR_REGISTRY, RPN, build_proposal_generator, find_top_rpn_proposals
from .rpn_head import RPN_HEAD_REGISTRY, StandardRPNHead, build_rpn_head

__all__ = [
    "PROPOSAL_GENERATOR_REGISTRY",
    "RPN",
    "build_proposal_generator",
    "find_top_rpn_proposals",
    "RPN_HEAD_REGISTRY",
    "StandardRPNHead",
    "build_rpn_head",
]
