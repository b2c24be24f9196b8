"""Secure aggregation (SecAgg / SecAgg+): key agreement, Shamir sharing, PRG masks, graphs.

Pure math on numpy plus the ``cryptography`` package; nothing here imports Flower. Masks are
uniform in Z_{2^b} and expanded by AES-256-CTR from full 256-bit seeds.
"""
