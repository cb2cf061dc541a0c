"""digits-unlearning: a Flower app on scikit-learn's handwritten digits."""
