"""Error codes a client answers with when it will not take part in a round, and why.

Kept apart from the modules that raise them (DP-SGD needs Opacus) so the ClientApp can
recognise them without importing what it does not use.
"""

DECLINED = 4001  # the client's privacy budget cannot pay for the round
INCOMPATIBLE = 4002  # the server's fl-ext version or model schema cannot work with the client
DROPPED = 4003  # simulation: the client stops answering (``simulate-dropout``)


class BudgetExhausted(RuntimeError):
    """The client's sample-level budget cannot pay for the round: it declines."""
