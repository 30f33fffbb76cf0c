variable "name" {
  description = "Name prefix of the deploy role."
  type        = string
}

variable "github_repository" {
  description = "GitHub repository allowed to assume the deploy role, as \"owner/name\"."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.github_repository))
    error_message = "github_repository must look like \"owner/name\"."
  }
}

variable "github_environment" {
  description = "GitHub Actions environment whose jobs may assume the role (the OIDC subject is repo:<owner/name>:environment:<env>)."
  type        = string
  default     = "production"
}

variable "create_oidc_provider" {
  description = "Create the account's GitHub OIDC identity provider. Set false when the account already has one and pass oidc_provider_arn."
  type        = bool
  default     = true
}

variable "oidc_provider_arn" {
  description = "ARN of an existing token.actions.githubusercontent.com identity provider (used when create_oidc_provider is false)."
  type        = string
  default     = null
}

variable "ecr_repository_arn" {
  description = "ECR repository the workflow pushes images to."
  type        = string
}

variable "ecs_service_arn" {
  description = "ECS service the workflow updates."
  type        = string
}

variable "ecs_cluster_arn" {
  description = "ECS cluster where the workflow runs the one-off migration task."
  type        = string
}

variable "ecs_migrate_task_definition_family" {
  description = "Task definition family whose revisions the workflow may run as the migration task."
  type        = string
}

variable "passable_role_arns" {
  description = "Task execution and task role ARNs the workflow may pass to ECS when it registers a task definition."
  type        = list(string)
}

variable "tags" {
  description = "Tags added to every resource of this module."
  type        = map(string)
  default     = {}
}
