"""Image captioning (Show and Tell): a CNN encoder and an LSTM decoder, greedy and beam search."""
