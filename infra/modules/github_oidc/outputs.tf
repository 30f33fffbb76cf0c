output "role_arn" {
  description = "ARN of the deploy role: store it as the GitHub environment secret AWS_DEPLOY_ROLE_ARN."
  value       = aws_iam_role.deploy.arn
}

output "oidc_provider_arn" {
  description = "ARN of the GitHub OIDC identity provider in use."
  value       = local.oidc_provider_arn
}
