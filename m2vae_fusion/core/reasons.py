"""Why an input was not fused: one typed reason per kind of refusal, shared by the conversions, the core agent and
the node. The value is the machine-readable key counted in /diagnostics as ``dropped.<source>.<reason>``.

Errors that refuse an input carry one of these as ``reason`` (match on the enum, never on message text).
"""
from __future__ import annotations

from enum import StrEnum


class DropReason(StrEnum):
    """Reason keys for dropped inputs (``str(reason)`` is the counter key)."""

    # message conversion (m2vae_fusion.core.messages)
    BAD_ENCODING = "bad_encoding"        # image encoding not supported
    COLOURLESS = "colourless"            # mono / depth image for a colour camera model
    EMPTY = "empty"                      # no data (0 px, no beams, no points, no ids)
    TRUNCATED = "truncated"              # buffer shorter than its layout claims
    MISMATCH = "mismatch"                # sizes or counts that do not agree with each other or the model
    NON_FINITE = "non_finite"            # NaN / inf where finite values are required
    NO_RETURN = "no_return"              # a scan / cloud with nothing observed
    NO_XYZ = "no_xyz"                    # a cloud without usable x/y/z fields
    BAD_ANGLES = "bad_angles"            # scan angles outside the sane range (|angle_increment| outside
    #                                      [1e-5, pi] rad, |angle_min| or |angle_max| above 4 pi rad)
    BEAM_COUNT = "beam_count"            # scan beam count disagrees with (angle_max - angle_min) / angle_increment + 1
    BAD_RANGE_LIMITS = "bad_range_limits"  # scan range_min < 0 or range_max <= range_min
    TOO_MANY_INVALID = "too_many_invalid"  # more than half of a scan's beams outside its own [range_min, range_max]
    # preprocessing and the model
    PREPROCESS = "preprocess"            # refused by m2vae_fusion.core.preprocess
    NOVEL = "novel"                      # out of distribution for the bundle's β-VAE (novelty score beyond the
    #                                      threshold, m2vae_fusion.core.novelty): not fused
    # the agent's policy
    STALE = "stale"                      # older than allowed (or older than the evidence held)
    FUTURE = "future"                    # stamped too far in the future
    NO_TARGET = "no_target"              # no target of interest at the observation's stamp
    UNTRUSTED = "untrusted"              # from (or relaying evidence of) an agent not in the trust list
    MODEL_ID = "model_id"                # a latent of another bundle (another latent space)
    FORMAT_VERSION = "format_version"    # a message of an unknown format version
    SPOOFED = "spoofed"                  # claims evidence of this agent that it never produced
    REDUNDANT = "redundant"              # adds no evidence to the belief held
    OUTLIER = "outlier"                  # held back by evidence accumulation: far from the evidence its slot holds
    #                                      (a misread, or the start of a change not yet confirmed; core.fusion)
    FUSION = "fusion"                    # the fusion engine refused the input
    OUT_OF_RANGE = "out_of_range"        # a peer latent mean beyond the bundle's latent_bounds (+ margin)
    ENCODING_OUT_OF_RANGE = "encoding_out_of_range"  # the engine's own encoding (observe/merge/re-encode) beyond them
    INVALID_OUTPUT = "invalid_output"    # a finite but invalid engine output (probabilities outside [0, 1] or not
    #                                      summing to 1); non-finite outputs are NON_FINITE
    INTERNAL_ERROR = "internal_error"    # a bug: an unexpected exception (counted, never crashes the node)
