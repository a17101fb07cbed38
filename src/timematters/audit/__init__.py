"""The temporal-bias audit: order probe per block, confidence gap, GradCAM and the HTML report."""
